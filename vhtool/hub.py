"""Resolving model sources (local directory, Hub id, ``builtin:*``) to local directories. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.builtin import BUILTIN_PREFIX
from vhtool.errors import HubUnavailableError, InputError

#: What a snapshot download fetches: weights as safetensors, configs and tokenizer files.
SNAPSHOT_PATTERNS = [
    "*.safetensors",
    "*.json",
    "*.txt",
    "*.model",
    "*.jinja",
    "*.tiktoken",
]


@dataclass(frozen=True)
class Source:
    """A resolved model source: a local directory plus what to record about where it came from."""

    path: Path
    kind: str  # "local" | "hub" | "builtin"
    model: str
    revision: str | None = None
    commit: str | None = None

    def record(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"model": self.model, "kind": self.kind}
        if self.kind == "local":
            doc["path"] = str(self.path.resolve())
        if self.revision:
            doc["revision"] = self.revision
        if self.commit:
            doc["commit"] = self.commit
        return doc


def looks_like_path(name: str) -> bool:
    """True for names that can only be paths (``./x``, ``/x``, ``~/x``, ``a/b/c``), never Hub ids."""
    return name.startswith(("/", "./", "../", "~", ".")) or name.count("/") > 1


def locate(name: str, *, revision: str | None = None, missing: str = "no such file or directory") -> tuple[str, Any]:
    """The one rule deciding what a model name means: ``("builtin", Path)``, ``("local", Path)`` or ``("hub", id)``.

    A path that exists is local and never sent to the Hub; a name that can only be a path but does not
    exist is an error (``missing`` words it for the caller); anything else must be a valid Hub id.

    Raises:
        InputError: an unknown built-in, a missing path, ``revision`` given for a local path, an invalid id.
    """
    if name.startswith(BUILTIN_PREFIX):
        from vhtool.builtin import builtin_path

        try:
            return "builtin", builtin_path(name)
        except KeyError as exc:
            raise InputError(str(exc.args[0]) if exc.args else f"unknown built-in model {name!r}.") from None
    path = Path(name).expanduser()
    if path.exists():
        if revision:
            raise InputError(f"{name}: --revision applies to Hub ids, not to a local directory.")
        return "local", path
    if looks_like_path(name):
        raise InputError(f"{name}: {missing}.")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils._validators import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise InputError(f"{name!r} is neither an existing directory nor a valid Hub model id.") from None
    return "hub", name


def resolve_source(
    model: str,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    token: str | bool | None = None,
    cache_dir: str | None = None,
) -> Source:
    """Turns a local path, ``builtin:NAME`` or Hub id into a local directory.

    A path that exists is used as is and never sent to the Hub. A Hub id is downloaded into the
    normal Hugging Face cache (safetensors only unless ``allow_pickle``), honouring ``revision``,
    ``HF_ENDPOINT`` and offline mode.

    Raises:
        InputError: a missing path or an unknown built-in.
        HubUnavailableError: the id cannot be fetched (offline, no such repo).
    """
    kind, where = locate(model, revision=revision)
    if kind != "hub":
        return Source(path=where, kind=kind, model=model)
    return _download(model, revision=revision, allow_pickle=allow_pickle, token=token, cache_dir=cache_dir)


def _download(
    repo_id: str, *, revision: str | None, allow_pickle: bool, token: str | bool | None, cache_dir: str | None
) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = SNAPSHOT_PATTERNS + (["*.bin", "*.pt"] if allow_pickle else [])
    offline_hint = (
        f"cannot fetch {repo_id!r} from the Hub (offline or unreachable). Download it on a connected machine "
        f"(`hf download {repo_id}`) and pass the local directory, or try a built-in model such as builtin:tiny-gpt2."
    )
    try:
        local = snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, token=token, cache_dir=cache_dir
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise HubUnavailableError(offline_hint) from None
    except RevisionNotFoundError:
        raise InputError(f"{repo_id}: revision {revision!r} does not exist on the Hub.") from None
    except GatedRepoError:
        raise InputError(f"{repo_id}: gated repo; log in (`hf auth login`) with a token that has access.") from None
    except RepositoryNotFoundError:
        raise HubUnavailableError(f"{repo_id}: no such model on the Hub (or no access with this token).") from None
    except OSError as exc:  # connection errors surface as OSError subclasses (requests/httpx)
        raise HubUnavailableError(f"{offline_hint} ({exc})") from None
    local_path = Path(local)
    commit = local_path.name if local_path.parent.name == "snapshots" else None
    return Source(path=local_path, kind="hub", model=repo_id, revision=revision, commit=commit)
