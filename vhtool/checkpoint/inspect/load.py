"""Reading a checkpoint named by a local path, ``builtin:`` name or Hub id into :class:`Loaded` tensors."""

from __future__ import annotations

from pathlib import Path

from vhtool.checkpoint.inspect.local import load_local, load_local_pickle
from vhtool.checkpoint.inspect.model import Loaded, SourceInfo
from vhtool.errors import InputError


def load(source: str, *, revision: str | None, token: str | bool | None, allow_pickle: bool = False) -> Loaded:
    """Resolves ``source`` with the Hub room's one rule and reads its headers (an existing path is never sent).

    A local folder whose weights are only pickles (``pytorch_model.bin``: DeepSpeed-Chat, trlx) is read with
    torch's weights-only loader when ``allow_pickle``, and refused otherwise with a message naming the flag.

    Raises:
        InputError: a missing path, an invalid id, not a checkpoint, pickle weights without ``allow_pickle``.
        CheckpointError: a malformed header, index or JSON file.
        HubUnavailableError: a Hub id that cannot be reached and is not cached, or no such repo.
    """
    from vhtool.hub.names import locate

    kind, where = locate(source, revision=revision)
    if kind != "hub":
        location = source if kind == "builtin" else str(where)
        info = SourceInfo(kind=kind, location=location)
        root = Path(where)
        if root.is_dir():
            from vhtool.checkpoint.pickle_src import pickle_refusal, weight_files

            try:
                fmt, files = weight_files(root)
            except InputError:
                fmt, files = "", []  # no weights at all: open_checkpoint says what is wrong
            if fmt == "pickle":
                if not allow_pickle:
                    raise pickle_refusal(root)
                return load_local_pickle(root, info, files)
        return load_local(root, info)
    from vhtool.checkpoint.inspect.remote import load_hub

    return load_hub(source, revision=revision, token=token)
