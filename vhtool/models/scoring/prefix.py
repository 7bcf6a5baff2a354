"""Shared prompts computed once: a batch of prefixes runs with a KV cache, then the sequences that start with them
run only their remaining tokens from that cache.

Preference records share their prompt between the chosen and rejected answers (N+1 ways for best-of-N). In a
*causal* model a token's output depends only on the tokens before it, so the outputs of a shared prefix, and the
keys and values its tokens leave in each layer, are the same whatever follows: the prefix runs once, and each
sequence's remaining tokens attend to the cached keys and values. The prefix is taken from the token ids
themselves (the part every answer of a record has in common), so it applies exactly when the joint
tokenisation starts with the same tokens, and never changes what is scored.

The padding is right padding throughout. A batch of prefixes of different lengths runs without a mask (a real
token only sees earlier, real positions); a batch of continuations gathers each row's prefix from the cache,
masks the prefix batch's padding (the gap between that row's prefix and the batch's widest) and its own right
padding, and passes position ids that continue its own prefix, so every real token sees exactly the keys and
positions of its unpadded sequence.

:func:`PromptCache.check` compares the cached path with the plain forward on a probe before it is used: a
bidirectional model (where a prefix token sees what follows), a model whose backbone takes no cache, or any
other mismatch leaves the cache off, with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vhtool.models.scoring.load import head_module

if TYPE_CHECKING:
    from vhtool.models.scoring.engine import Scorer


@dataclass
class PrefixBatch:
    """One batch of prefixes after its forward.

    Attributes:
        cache: the backbone's KV cache of the right-padded batch.
        outputs: the head's output at every position, ``(rows, width)`` (float32, before any normalisation).
        lengths: each prefix's token count; ``width`` the batch's.
    """

    cache: Any
    outputs: Any
    lengths: list[int]
    width: int


class PromptCache:
    """The cached-prefix forward of one loaded :class:`~vhtool.models.scoring.engine.Scorer`.

    Use :meth:`check` to build one; it is ``None`` (with a reason) where the model does not allow it.
    """

    def __init__(self, scorer: Scorer, cache_name: str) -> None:
        self.scorer = scorer
        self.cache_name = cache_name

    @classmethod
    def check(cls, scorer: Scorer) -> tuple[PromptCache | None, str]:
        """A prompt cache for ``scorer`` and why, or ``None`` and why not (a short reason for the summary)."""
        import torch

        if scorer.head == "reward" and scorer.classifier is None:
            return None, "off: the reward adapter's forward switches adapters itself"
        if scorer.forward_kind != "backbone" or scorer.backbone is None:
            return None, "off: the model runs its full forward"
        params = inspect.signature(scorer.backbone.forward).parameters
        name = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
        if name is None or "use_cache" not in params or "position_ids" not in params:
            return None, f"off: {type(scorer.backbone).__name__} takes no KV cache and position ids"
        pc = cls(scorer, name)
        try:
            ok = pc._probe(torch)
        except Exception as exc:  # any architecture-specific failure of the cached path only turns it off
            return None, f"off: the cached forward failed on a probe ({type(exc).__name__})"
        if not ok:
            return None, "off: the cached forward does not reproduce the plain one (not a causal model?)"
        return pc, "on"

    def _probe(self, torch: Any) -> bool:
        s = self.scorer
        n = min(16, s.max_positions or 16)
        if n < 10:
            return False
        base = [(7 * i + 3) % s.vocab_rows for i in range(n)]
        other = [(11 * i + 5) % s.vocab_rows for i in range(n)]
        prefixes = [base[:5], other[:7]]
        seqs = [base[:8], base[:5] + other[:6], other[:9]]
        rows = [0, 0, 1]
        batch = self.run_prefixes(prefixes)
        got = self.rows_from_prefixes(batch, rows, seqs)
        tol = 1e-4 if s.compute_dtype == "float32" else 2e-2
        with torch.inference_mode():
            for seq, row in zip(seqs, got, strict=True):
                ids = torch.tensor([seq], dtype=torch.long, device=s.device)
                ref = s._head_outputs(ids, None, kind="backbone").float()[0].cpu()
                if ref.shape != row.shape or not torch.allclose(row, ref, atol=tol, rtol=tol):
                    return False
        return True

    def _hidden(self, ids: Any, mask: Any, pos: Any, cache: Any) -> tuple[Any, Any]:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "use_cache": True}
        if cache is not None:
            kwargs[self.cache_name] = cache
        out = self.scorer.backbone(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        fields = getattr(out, "__dataclass_fields__", {})
        new_cache = out.cache if "cache" in fields else getattr(out, "past_key_values", None)
        return hidden, new_cache

    def _head(self, hidden: Any) -> Any:
        head = head_module(self.scorer.model)
        head_dev = next(head.parameters()).device
        if hidden.device != head_dev:
            hidden = hidden.to(head_dev)
        return head(hidden)[..., 0].float()

    def run_prefixes(self, prefixes: Sequence[Sequence[int]]) -> PrefixBatch:
        """Runs a batch of prefixes (right-padded, no mask needed) and keeps their KV cache and outputs."""
        import torch

        s = self.scorer
        width = max(len(p) for p in prefixes)
        ids = torch.full((len(prefixes), width), s.pad_id, dtype=torch.long)
        for r, p in enumerate(prefixes):
            ids[r, : len(p)] = torch.tensor(list(p), dtype=torch.long)
        ids = ids.to(s.device)
        pos = torch.arange(width, device=s.device).unsqueeze(0).expand(len(prefixes), -1)
        with torch.inference_mode():
            hidden, cache = self._hidden(ids, None, pos, None)
            outputs = self._head(hidden)
        if cache is None:
            raise RuntimeError("the backbone returned no KV cache")
        return PrefixBatch(cache, outputs, [len(p) for p in prefixes], width)

    def rows_from_prefixes(self, batch: PrefixBatch, rows: Sequence[int], seqs: Sequence[Sequence[int]]) -> list[Any]:
        """Each sequence's per-token head outputs (CPU, float32): its prefix's, then its remaining tokens' run
        from the prefix's cache. ``rows[j]`` is the prefix (row of ``batch``) that ``seqs[j]`` starts with, and
        every sequence is longer than its prefix."""
        import torch

        s = self.scorer
        wp = batch.width
        tails = [list(seq[batch.lengths[g] :]) for g, seq in zip(rows, seqs, strict=True)]
        ws = max(len(t) for t in tails)
        n = len(seqs)
        ids = torch.full((n, ws), s.pad_id, dtype=torch.long)
        mask = torch.zeros((n, wp + ws), dtype=torch.long)
        pos = torch.zeros((n, ws), dtype=torch.long)
        for j, (g, tail) in enumerate(zip(rows, tails, strict=True)):
            p = batch.lengths[g]
            ids[j, : len(tail)] = torch.tensor(tail, dtype=torch.long)
            mask[j, :p] = 1
            mask[j, wp : wp + len(tail)] = 1
            pos[j] = torch.arange(p, p + ws)
        index = torch.tensor(list(rows), dtype=torch.long, device=batch.outputs.device)
        with torch.inference_mode():
            cache = _select_rows(batch.cache, index)
            hidden, _ = self._hidden(ids.to(s.device), mask.to(s.device), pos.to(s.device), cache)
            tail_out = self._head(hidden).cpu()
            head_out = batch.outputs.cpu()
        return [torch.cat([head_out[g, : batch.lengths[g]], tail_out[j, : len(tails[j])]]) for j, g in enumerate(rows)]

    def score_from_prefixes(
        self, batch: PrefixBatch, rows: Sequence[int], seqs: Sequence[Sequence[int]]
    ) -> list[float]:
        """Each sequence's score, read as :meth:`Scorer.score_batch` reads it (readout rule and normalisation)."""
        s = self.scorer
        scores: list[float] = []
        for seq, row in zip(seqs, self.rows_from_prefixes(batch, rows, seqs), strict=True):
            out = s.readout.normalize(row) if s.readout is not None else row
            at = s.readout.index(seq) if s.readout is not None else s.readout_index(seq)
            scores.append(float(out[at]))
        return scores


def _select_rows(cache: Any, index: Any) -> Any:
    """A new KV cache holding rows ``index`` of ``cache`` (rows may repeat); ``cache`` itself is left as it is,
    since the forward of the continuations appends to the cache it is given."""
    from transformers import DynamicCache

    if isinstance(cache, tuple):  # the legacy form: per layer (keys, values)
        return tuple(tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in cache)
    layers = getattr(cache, "layers", None)
    if layers is not None:
        data = [
            (
                lay.keys.index_select(0, index.to(lay.keys.device)),
                lay.values.index_select(0, index.to(lay.values.device)),
            )
            for lay in layers
        ]
        return DynamicCache(data)
    legacy = cache.to_legacy_cache()  # releases before cache layers
    old_api: Any = DynamicCache  # from_legacy_cache is gone from the releases with layers
    return old_api.from_legacy_cache(
        tuple((k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device))) for k, v in legacy)
    )


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens all of ``seqs`` share."""
    first = seqs[0]
    n = min(len(x) for x in seqs)
    for i in range(n):
        t = first[i]
        if any(x[i] != t for x in seqs[1:]):
            return i
    return n


__all__ = ["PrefixBatch", "PromptCache", "common_prefix"]
