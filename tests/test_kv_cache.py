"""The wrapper's KV cache (issue 20, point 13): passed on under the name the installed transformers takes.

transformers renamed ``forward(past_key_values=...)`` to ``cache`` (the old name warns, and goes in 5.40) and
the output's ``past_key_values`` to ``cache`` (the old attribute logs a deprecation). A real generation step
through the wrapper must trigger neither, and give the values of a full forward without a cache.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from tests.helpers import build_tiny
from vhtool import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def deprecations_fail() -> Iterator[_Records]:
    """FutureWarning/DeprecationWarning become errors; transformers' logged warnings are collected.

    transformers' ``warning_once`` remembers what it said in this process: its memory is cleared first, so a
    deprecation logged by an earlier test is logged (and seen) again here.
    """
    from transformers.utils import logging as hf_logging

    logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]
    root = logging.getLogger("transformers")
    handler = _Records()
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # type: ignore[no-untyped-call]
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            yield handler
    finally:
        root.removeHandler(handler)
        hf_logging.set_verbosity(previous)


def _deprecation_lines(handler: _Records) -> list[str]:
    return [m for m in handler.messages if "deprecat" in m.lower()]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_generation_step_with_cache_no_deprecation_same_values(arch: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(build_tiny(arch)).eval()
    ids = torch.tensor([[5, 9, 3, 7, 11, 2]])
    with torch.no_grad(), deprecations_fail() as logged:
        full_logits, _, full_values = model(input_ids=ids)
        _, _, prefix_values, cache = model(input_ids=ids[:, :-1], return_past_key_values=True)
        step_logits, _, step_values, cache2 = model(
            input_ids=ids[:, -1:],
            past_key_values=cache,
            attention_mask=torch.ones_like(ids),
            return_past_key_values=True,
        )
    assert _deprecation_lines(logged) == []
    from transformers import Cache

    assert isinstance(cache, Cache) and isinstance(cache2, Cache)
    assert cache2.get_seq_length() == ids.shape[1]
    assert step_values.shape == (1, 1)
    torch.testing.assert_close(prefix_values, full_values[:, :-1])
    torch.testing.assert_close(step_values[:, -1], full_values[:, -1])
    torch.testing.assert_close(step_logits[:, -1], full_logits[:, -1])


def test_cache_under_its_new_name_too() -> None:
    """``cache=`` (transformers' current name) works as ``past_key_values=``; both at once is refused."""
    from vhtool.errors import InputError

    model = AutoModelForCausalLMWithValueHead.from_pretrained(build_tiny("gpt2")).eval()
    ids = torch.tensor([[5, 9, 3, 7]])
    with torch.no_grad(), deprecations_fail() as logged:
        _, _, full_values = model(input_ids=ids)
        _, _, _, cache = model(input_ids=ids[:, :-1], return_past_key_values=True)
        _, _, step_values = model(input_ids=ids[:, -1:], cache=cache)
    assert _deprecation_lines(logged) == []
    torch.testing.assert_close(step_values[:, -1], full_values[:, -1])
    with pytest.raises(InputError, match="not both"):
        model(input_ids=ids[:, -1:], cache=cache, past_key_values=cache)


def test_seq2seq_decoder_step_with_cache_no_deprecation_same_values() -> None:
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(build_tiny("t5")).eval()
    ids = torch.tensor([[5, 9, 3, 7]])
    dec = torch.tensor([[0, 4, 8, 6]])
    with torch.no_grad(), deprecations_fail() as logged:
        _, _, full_values = model(input_ids=ids, decoder_input_ids=dec)
        _, _, _, cache = model(input_ids=ids, decoder_input_ids=dec[:, :-1], return_past_key_values=True)
        _, _, step_values = model(input_ids=ids, decoder_input_ids=dec[:, -1:], past_key_values=cache)
    assert _deprecation_lines(logged) == []
    torch.testing.assert_close(step_values[:, -1], full_values[:, -1])


def test_the_guard_catches_the_deprecated_name() -> None:
    """The check above is not vacuous: where transformers has the new name, the old one fails inside it."""
    base = build_tiny("gpt2").eval()
    ids = torch.tensor([[5, 9, 3, 7]])
    renamed = "cache" in inspect.signature(type(base).forward).parameters
    with torch.no_grad():
        cache = base(input_ids=ids[:, :-1], use_cache=True)
    cache = cache.cache if renamed else cache.past_key_values
    with torch.no_grad(), deprecations_fail():
        if renamed:
            with pytest.raises(FutureWarning, match="past_key_values"):
                base(input_ids=ids[:, -1:], past_key_values=cache)
        else:  # a release before the rename: the old name is the only name, and it is quiet
            base(input_ids=ids[:, -1:], past_key_values=cache)
