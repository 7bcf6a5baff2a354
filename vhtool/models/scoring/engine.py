"""The forward of ``vhtool score``: :class:`Scorer` runs padded batches and reads the head at each last real token.

Right-padded batches run without an attention mask: in a causal LM a real token only attends to earlier, real
positions, so the plain causal kernels give its output exactly (left padding, the tokenizer's choice for e.g.
Llama, passes the mask and mask-derived ``position_ids``).

Only the **backbone** runs (``getattr(model, model.base_model_prefix)``, e.g. ``GPT2Model``): the LM head's logits
(``batch x seq x vocab``; ~30% of GPT-2's forward FLOPs) are never computed. At load time a short self-check
compares the backbone's output with the hidden state vhtool's own forward gives the value head (the LM head's
input); if they differ for some architecture the engine falls back to the full forward and says so.

A plain transformers classifier with one label (``…ForSequenceClassification``, the form most reward models
take, or a ``…ForTokenClassification`` critic) runs the same way: its backbone, then its own ``score`` (or
``classifier``) head. A sequence classifier's score is read where transformers reads it (the rightmost token
that is not the config's ``pad_token_id``, see :meth:`Scorer.readout_index`), so it equals the model's logits.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vhtool.errors import OperationError
from vhtool.models.scoring.inputs import InputItem
from vhtool.models.scoring.load import base_model, head_module, load_for_scoring
from vhtool.models.scoring.options import ScoreOptions
from vhtool.models.scoring.prepare import Prepared, RecordPreparer


class Scorer:
    """A checkpoint loaded for scoring: tokenizer, model, the chosen head and the fast backbone path.

    Args:
        checkpoint: a vhtool (or TRL) value-head checkpoint, or a transformers sequence-classification reward
            model / token-classification critic (one label): local directory, Hub id or ``builtin:*``.
        options: see :class:`~vhtool.models.scoring.options.ScoreOptions`.
        local_rank: under torchrun, this process's GPU (``LOCAL_RANK``): CUDA scoring uses ``cuda:<local_rank>``.

    Raises:
        InputError: the checkpoint cannot be scored as asked (see
            :func:`~vhtool.models.scoring.load.load_for_scoring`).
    """

    def __init__(
        self, checkpoint: str | os.PathLike[str], *, options: ScoreOptions, local_rank: int | None = None
    ) -> None:
        import torch

        t0 = time.perf_counter()
        self.checkpoint = str(checkpoint)
        self.options = options
        loaded = load_for_scoring(self.checkpoint, options=options, local_rank=local_rank)
        self.model: Any = loaded.model
        self.tokenizer: Any = loaded.tokenizer
        self.device = loaded.device
        self.compute_dtype = loaded.compute_dtype
        self.max_positions = loaded.max_positions
        self.vocab_rows = loaded.vocab_rows
        self.pad_id = loaded.pad_id
        self.padding_side = loaded.padding_side
        self.truncation_side = loaded.truncation_side
        self.head = loaded.head
        self.head_reason = loaded.head_reason
        self.join = loaded.join
        self.classifier = loaded.classifier
        self.readout_pad_id = loaded.readout_pad_id
        #: where each sequence's score is read, and its normalisation (see :mod:`vhtool.models.scoring.readout`)
        self.readout = loaded.readout
        self.notes: list[str] = list(loaded.notes)
        if self.readout is not None and self.readout.worth_a_note:
            self.notes.append(self.readout.describe())
        self.preparer = RecordPreparer(
            tokenizer=loaded.tokenizer,
            join=loaded.join,
            vocab_rows=loaded.vocab_rows,
            max_length=options.max_length,
            max_positions=loaded.max_positions,
            truncation_side=loaded.truncation_side,
        )
        self._setup_forward(torch)
        self.load_seconds = time.perf_counter() - t0

    def prepare(self, items: Sequence[InputItem]) -> list[Prepared]:
        """Turns a window of records into token ids (one tokenizer call for all texts), validating each."""
        prepared = self.preparer.prepare(items)
        if self.readout is not None:
            limit = self.options.max_length or self.max_positions
            for p in prepared:
                if p.error is None and p.ids is not None:
                    p.ids = self.readout.prepare(p.ids, limit=limit)
        return prepared

    # ------------------------------------------------------------------ the fast path and its self-check
    def _setup_forward(self, torch: Any) -> None:
        pm = base_model(self.model)
        inner = pm.get_base_model() if hasattr(pm, "get_base_model") else pm
        prefix = getattr(inner, "base_model_prefix", "") or ""
        backbone = getattr(inner, prefix, None) if prefix else None
        self.backbone: Any = backbone if isinstance(backbone, torch.nn.Module) and backbone is not inner else None
        params = inspect.signature(self.backbone.forward).parameters if self.backbone is not None else {}
        self._takes_positions = "position_ids" in params
        self._takes_use_cache = "use_cache" in params
        self.forward_kind = "backbone"
        if self.classifier is not None:
            self._check_classifier(torch)
            return
        if self.head == "reward":
            return  # reward.compute_reward_score runs the backbone (or, lacking one, the LM head's input) itself
        if self.backbone is None:
            self.forward_kind = "full"
            self.notes.append(f"{type(inner).__name__}: no backbone module found; running the full forward (slower).")
            return
        n = min(7, self.max_positions or 7)
        ids = torch.arange(n, device=self.device).unsqueeze(0) % self.vocab_rows
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            fast = self._head_outputs(ids, mask, kind="backbone")
            ref = self._head_outputs(ids, mask, kind="full")
        tol = 1e-4 if fast.dtype == torch.float32 and self.compute_dtype == "float32" else 2e-2
        if fast.shape != ref.shape or not torch.allclose(fast.float(), ref.float(), atol=tol, rtol=tol):
            self.forward_kind = "full"
            self.notes.append(
                f"{type(inner).__name__}: the backbone's output is not what the head reads in the full forward; "
                "running the full forward (slower)."
            )

    def _check_classifier(self, torch: Any) -> None:
        """A classifier's backbone + head must give its own logits (read where transformers reads them); else fail.

        There is no slower path to fall back on for a sequence classifier (its forward gives one pooled number,
        not the per-token outputs the engine reads from), so a mismatch is an error, not a note.
        """
        if self.backbone is None:
            raise OperationError(f"{type(self.model).__name__}: no backbone module found; cannot score it.")
        n = min(7, self.max_positions or 7)
        ids = torch.arange(1, n + 1, device=self.device).unsqueeze(0) % self.vocab_rows
        with torch.inference_mode():
            fast = self._head_outputs(ids, None, kind="backbone").float()
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        if self.classifier == "seq-cls":
            fast = fast[:, self.readout_index(ids[0].tolist())]
            ref = logits[:, 0]
        else:
            ref = logits[..., 0]
        tol = 1e-4 if self.compute_dtype == "float32" else 2e-2
        if fast.shape != ref.shape or not torch.allclose(fast, ref, atol=tol, rtol=tol):
            raise OperationError(
                f"{type(self.model).__name__}: its backbone and head do not reproduce the model's own logits; "
                "vhtool cannot score this architecture as a classifier."
            )

    def readout_index(self, seq: Sequence[int]) -> int:
        """Where a sequence's score is read, as a position in ``seq`` (unpadded).

        The last token, except for a sequence classifier: there, as transformers' ``…ForSequenceClassification``
        does, the rightmost token whose id is not the config's ``pad_token_id`` (0 when all are; the last token
        when the config has none). A text that ends in its pad token (GPT-2's eos, say) is read before it.
        """
        pad = self.readout_pad_id
        if self.classifier != "seq-cls" or pad is None:
            return len(seq) - 1
        return next((i for i in range(len(seq) - 1, -1, -1) if seq[i] != pad), 0)

    def _head_outputs(self, ids: Any, mask: Any, *, kind: str, positions: Any = None) -> Any:
        """Per-token head outputs ``(batch, seq)`` for the chosen head, by the fast (backbone) or full path.

        ``positions`` (when the batch was prepared by :meth:`pad_batch`) are the ids derived from ``mask`` below.
        """
        import torch

        pos = positions
        if pos is None and mask is not None:
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        model = self.model
        if self.classifier is not None:
            hidden = self._backbone_hidden(ids, mask, pos)
            head = head_module(model)
            head_dev = next(head.parameters()).device
            if hidden.device != head_dev:
                hidden = hidden.to(head_dev)
            logits: torch.Tensor = head(hidden)[..., 0]
            return logits
        if self.head == "reward":
            return self._reward_outputs(ids, mask, pos)
        if kind == "full":
            extra = {} if pos is None else {"position_ids": pos}
            _, _, value = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra)
            return value
        hidden = self._backbone_hidden(ids, mask, pos)
        head_dev = model.v_head.summary.weight.device
        if hidden.device != head_dev:
            hidden = hidden.to(head_dev)
        out: torch.Tensor = model.v_head(hidden).squeeze(-1)
        return out

    def _backbone_hidden(self, ids: Any, mask: Any, pos: Any) -> Any:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self._takes_positions and pos is not None:
            kwargs["position_ids"] = pos
        if self._takes_use_cache:
            kwargs["use_cache"] = False
        out = self.backbone(**kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _reward_outputs(self, ids: Any, mask: Any, pos: Any) -> Any:
        """The reward adapter's per-token scores (reward.py switches the adapter on and runs the backbone only)."""
        from vhtool.models.reward import compute_reward_score

        kwargs = {"position_ids": pos} if self._takes_positions and pos is not None else {}
        return compute_reward_score(self.model, ids, mask, **kwargs)[..., 0]

    # ------------------------------------------------------------------ one batch
    def score_batch(self, seqs: Sequence[list[int]]) -> tuple[list[float], list[list[float]] | None]:
        """Scores token sequences in one padded batch: the head at each last real token (and all tokens)."""
        return self.forward_batch(self.pad_batch(seqs))

    def pad_batch(self, seqs: Sequence[list[int]]) -> PaddedBatch:
        """Everything a batch's forward needs but the forward: padded ids, mask, position ids, readout indices,
        already on the device. Pure preparation, so a server can run it on another thread while a forward runs.
        """
        import torch

        from vhtool.models.reward import last_token_index

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            t = torch.tensor(s, dtype=torch.long)
            if self.padding_side == "left":
                ids[r, width - len(s) :] = t
                mask[r, width - len(s) :] = 1
            else:
                ids[r, : len(s)] = t
                mask[r, : len(s)] = 1
        # Right padding needs no attention mask in a causal LM: a real token only attends to positions before
        # it, all real, so the plain causal path (SDPA's is_causal kernels, no mask tensor) gives its output.
        needs_mask = self.padding_side == "left" and any(len(s) < width for s in seqs)
        if self.readout is not None:  # the hook: the convention's token
            last = torch.tensor(
                [(width - len(s) if self.padding_side == "left" else 0) + self.readout.index(s) for s in seqs]
            )
        elif self.classifier == "seq-cls":
            last = torch.tensor(
                [(width - len(s) if self.padding_side == "left" else 0) + self.readout_index(s) for s in seqs]
            )
        else:
            last = last_token_index(mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0) if needs_mask else None
        return PaddedBatch(
            seqs=tuple(seqs),
            width=width,
            ids=ids.to(self.device, non_blocking=True),
            mask=mask.to(self.device, non_blocking=True) if needs_mask else None,
            positions=positions.to(self.device, non_blocking=True) if positions is not None else None,
            last=last,
        )

    def forward_batch(self, batch: PaddedBatch) -> tuple[list[float], list[list[float]] | None]:
        """The forward of a batch :meth:`pad_batch` prepared: its scores (and per-token values when asked)."""
        import torch

        seqs, width = batch.seqs, batch.width
        with torch.inference_mode():
            out = self._head_outputs(batch.ids, batch.mask, kind=self.forward_kind, positions=batch.positions).float()
            if self.readout is not None:  # the hook: the convention's normalisation
                out = self.readout.normalize(out)
            scores = out[torch.arange(len(seqs), device=out.device), batch.last.to(out.device)].cpu().tolist()
            values: list[list[float]] | None = None
            if self.options.per_token:
                rows = out.cpu()
                values = []
                for r, s in enumerate(seqs):
                    row = rows[r, width - len(s) :] if self.padding_side == "left" else rows[r, : len(s)]
                    values.append(row.tolist())
        return scores, values


@dataclass(frozen=True)
class PaddedBatch:
    """One batch ready for its forward (see :meth:`Scorer.pad_batch`).

    Attributes:
        seqs: the token sequences, unpadded, in batch order.
        width: the padded length.
        ids: ``(batch, width)`` padded token ids, on the scoring device.
        mask: the attention mask to pass, or ``None`` (right padding, or no padding: the causal path).
        positions: position ids derived from the mask when it is passed, else ``None``.
        last: ``(batch,)`` the padded position each score is read at (CPU).
    """

    seqs: tuple[list[int], ...]
    width: int
    ids: Any
    mask: Any
    positions: Any
    last: Any


__all__ = ["PaddedBatch", "Scorer"]
