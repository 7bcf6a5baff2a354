"""Train a tiny LoRA reward adapter with PEFT (offline, on builtin:tiny-llama) for `vhtool attach-reward-adapter`.

The adapter is a 1-label sequence classifier (`task_type="SEQ_CLS"`: PEFT saves the `score` head with
it), trained for a few steps with the pairwise (Bradley-Terry) loss of reward modelling. Replace the
model and the pairs with yours; the rest stays the same.

    python examples/make_reward_adapter.py reward-lora
"""

import os
import sys
import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from vhtool.builtin import builtin_path

if not os.environ.get("TRANSFORMERS_VERBOSITY") and not os.environ.get("VHTOOL_DEBUG"):
    # What a reward model's load reports is expected here (a new `score` head, the LM head unused), and PEFT
    # calls a transformers API deprecated in v5: quiet, as vhtool's own loads are. Set either variable to see it.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

out = sys.argv[1] if len(sys.argv) > 1 else "reward-lora"
base = builtin_path("builtin:tiny-llama")  # or a Hub id / local folder: the policy's base model
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))

pairs = [("a good answer", "a bad answer"), ("thanks, that helped", "no idea"), ("clear and kind", "rude")]
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
torch.manual_seed(0)
for _step in range(10):
    chosen, rejected = zip(*pairs)
    batch = tok(list(chosen) + list(rejected), return_tensors="pt", padding=True)
    rewards = model(**batch).logits.squeeze(-1)
    loss = -torch.nn.functional.logsigmoid(rewards[: len(pairs)] - rewards[len(pairs) :]).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
print(f"final pairwise loss {loss.item():.3f}")
model.save_pretrained(out)
print(f"saved the reward adapter to {out}/")
