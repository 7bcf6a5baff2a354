"""The only room that talks to the Hugging Face Hub.

``names`` decides what a model name means; ``source`` turns it into a local directory; ``download``
fetches snapshots and files; ``headers`` reads remote safetensors headers by range requests;
``remote_state`` and ``commit`` are the Hub half of ``vhtool push``; ``errors`` is the one
translation of Hub exceptions into :class:`~vhtool.errors.VhtoolError`s that all of them use.
"""

from __future__ import annotations

from vhtool.hub.errors import hub_errors
from vhtool.hub.names import locate, looks_like_path
from vhtool.hub.source import Source, resolve_source

__all__ = ["Source", "hub_errors", "locate", "looks_like_path", "resolve_source"]
