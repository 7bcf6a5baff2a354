"""Reading a checkpoint named by a local path, ``builtin:`` name or Hub id into :class:`Loaded` tensors."""

from __future__ import annotations

from pathlib import Path

from vhtool.checkpoint.inspect.local import load_local
from vhtool.checkpoint.inspect.model import Loaded, SourceInfo


def load(source: str, *, revision: str | None, token: str | bool | None) -> Loaded:
    """Resolves ``source`` with the Hub room's one rule and reads its headers (an existing path is never sent).

    Raises:
        InputError: a missing path, an invalid id, not a checkpoint.
        CheckpointError: a malformed header, index or JSON file.
        HubUnavailableError: a Hub id that cannot be reached and is not cached, or no such repo.
    """
    from vhtool.hub.names import locate

    kind, where = locate(source, revision=revision)
    if kind != "hub":
        location = source if kind == "builtin" else str(where)
        return load_local(Path(where), SourceInfo(kind=kind, location=location))
    from vhtool.checkpoint.inspect.remote import load_hub

    return load_hub(source, revision=revision, token=token)
