"""Where a model's last hidden state comes from: its device under accelerate's device map, a hook that captures it.

Both the value head (:mod:`vhtool.models.value_head`) and the reward adapter's score head
(:mod:`vhtool.models.reward`) read that hidden state; this module is the piece they share, below both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def mapped_output_device(model: Any) -> torch.device | None:
    """Where the backbone's last hidden state comes out of a model dispatched by accelerate (``hf_device_map``).

    That is the execution device of the last module of the device map in the model's own module order,
    the LM head left out: a module mapped to ``"cpu"`` or ``"disk"`` (offloaded) executes on accelerate's
    main device (the first accelerator in the map, else the CPU). ``None`` when the model has no device map.
    Offloaded weights sit on the ``meta`` device, so a head must never follow them there.
    """
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return None
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    order = {name: k for k, (name, _) in enumerate(base.named_modules())}
    get_out = getattr(base, "get_output_embeddings", None)
    out = get_out() if get_out is not None else None
    out_names = {name for name, m in base.named_modules() if out is not None and m is out}

    def is_out(key: str) -> bool:
        return any(key == n or key.startswith(n + ".") for n in out_names)

    def device(value: Any) -> str:
        return f"cuda:{value}" if isinstance(value, int) else str(value)

    offloaded = ("cpu", "disk")
    main = next((device(v) for v in device_map.values() if device(v) not in offloaded), "cpu")
    keys = [k for k in device_map if not is_out(k)] or list(device_map)
    last = max(keys, key=lambda k: (order.get(k, -1), k))
    where = device(device_map[last])
    return torch.device(main if where in offloaded else where)


class LastHidden:
    """Captures the tensor a module receives (``input``) or returns (``output``) during one forward."""

    def __init__(self, module: nn.Module, where: str) -> None:
        self.value: torch.Tensor | None = None
        if where == "input":
            self.handle = module.register_forward_hook(self._from_input)
        else:
            self.handle = module.register_forward_hook(self._from_output)

    def _from_input(self, _m: nn.Module, inputs: Any, _out: Any) -> None:
        self.value = inputs[0]

    def _from_output(self, _m: nn.Module, _inp: Any, output: Any) -> None:
        self.value = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)

    def __enter__(self) -> LastHidden:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


__all__ = ["LastHidden", "mapped_output_device"]
