"""``vhtool serve`` with a gate in front of the model, for the drain tests: the real command, nothing else changed.

    python tests/serve_gated.py GATE serve CHECKPOINT [OPTIONS...]

Every forward first creates ``GATE.entered`` (so a test knows a batch is computing), then waits until the file
``GATE`` exists; with ``SERVE_GATED_POISON=ID`` in the environment, a batch holding token ``ID`` raises (a forward
that fails). The CLI, uvicorn, the signal handling and the batcher are the shipped ones; only the forward is
held, so a test can keep a request "still running" while it sends SIGTERM, without timing anything.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from vhtool.models.scoring.engine import Scorer

GATE = Path(sys.argv[1])
POISON = int(os.environ.get("SERVE_GATED_POISON", "-1"))
_forward = Scorer.forward_batch


def _gated(self: Scorer, batch: Any) -> tuple[list[float], list[list[float]] | None]:
    GATE.with_name(GATE.name + ".entered").touch()
    while not GATE.exists():
        time.sleep(0.01)
    if any(POISON in seq for seq in batch.seqs):
        raise RuntimeError("poisoned batch")
    return _forward(self, batch)


Scorer.forward_batch = _gated  # type: ignore[method-assign]

if __name__ == "__main__":
    from vhtool.cli.app import main

    sys.argv = ["vhtool", *sys.argv[2:]]
    main()
