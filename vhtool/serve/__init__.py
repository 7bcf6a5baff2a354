"""``vhtool serve``: the scoring engine over HTTP, for online RLHF (OpenRLHF, verl) and anyone else.

Modules: :mod:`.options` (address, limits), :mod:`.wire` (each route's request and answer), :mod:`.batcher`
(the bounded queue and the one model worker, batching across requests with the engine's planning),
:mod:`.metrics` (Prometheus), :mod:`.app` (the Starlette routes), :mod:`.server` (bind, uvicorn, drain).

This room imports Starlette, uvicorn and prometheus_client (the ``serve`` extra); only ``vhtool serve`` imports
it, so the other commands start without them. There is no second scoring engine here: every score comes from
:class:`vhtool.models.scoring.Scorer`, so a text's score equals ``vhtool score``'s whatever it is batched with.
"""

from __future__ import annotations

from vhtool.serve.options import ServeOptions

__all__ = ["ServeOptions"]
