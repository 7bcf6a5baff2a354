"""The scoring engine behind ``vhtool score``: fast, order-preserving batch scoring of a data set.

How it is fast:

* the input is **streamed** in windows of ``window`` records (default 4096): memory is constant in
  the number of records; each window is tokenised in one call of the fast tokenizer (:mod:`.prepare`);
* inside a window the records are **sorted by length** (longest first) and packed into batches under
  a padded-token budget (:mod:`.plan`); results are put back in input order and written as each window
  finishes (:mod:`.run`, :mod:`.tally`);
* right-padded batches run without an attention mask, and only the **backbone** runs, never the LM head
  (:mod:`.engine`); ``torch.inference_mode``, no KV cache, a compute dtype of the user's choice (:mod:`.load`).

What is scored: a value-head checkpoint (value head or reward adapter), or a transformers sequence-classification
reward model / token-classification critic with one label (read as transformers reads it, :mod:`.engine`).
Only causal LMs are scored: for an encoder-decoder there is no single honest answer to "the score of a
text" (what goes to the decoder?), so those are refused. Under torchrun the ranks share the planned batches
(:mod:`.distributed`, over the process-group exchange of :mod:`.ranks`).

Modules: :mod:`.options` (what to do), :mod:`.inputs` (records in), :mod:`.load` (the model), :mod:`.prepare`
(records to token ids), :mod:`.engine` (the forward), :mod:`.plan` (batches), :mod:`.tally` and :mod:`.results`
(what comes out), :mod:`.run` (one process), :mod:`.ranks` and :mod:`.distributed` (several).
The names below are the package's public API, re-exported for ``from vhtool.models.scoring import ...``.
"""

from __future__ import annotations

from vhtool.models.scoring.engine import Scorer
from vhtool.models.scoring.inputs import InputItem, InputSpec, read_inputs
from vhtool.models.scoring.options import ScoreOptions, parse_max_memory
from vhtool.models.scoring.plan import plan_batches
from vhtool.models.scoring.results import BadRecordError, ScoredRecord, ScoreSummary, SkippedRecord
from vhtool.models.scoring.run import check_output, score_dataset

__all__ = [
    "BadRecordError",
    "InputItem",
    "InputSpec",
    "ScoreOptions",
    "ScoreSummary",
    "ScoredRecord",
    "Scorer",
    "SkippedRecord",
    "check_output",
    "parse_max_memory",
    "plan_batches",
    "read_inputs",
    "score_dataset",
]
