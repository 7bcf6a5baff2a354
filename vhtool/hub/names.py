"""What a model name means: a built-in, a local path or a Hub id; and the stricter repo id a push needs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from vhtool.builtin import BUILTIN_PREFIX
from vhtool.errors import InputError

Kind = Literal["builtin", "local", "hub"]


def looks_like_path(name: str) -> bool:
    """True for names that can only be paths (``./x``, ``/x``, ``~/x``, ``a/b/c``), never Hub ids."""
    return name.startswith(("/", "./", "../", "~", ".")) or name.count("/") > 1


def locate(
    name: str, *, revision: str | None = None, missing: str = "no such file or directory"
) -> tuple[Kind, Path | str]:
    """The one rule deciding what a model name means: ``("builtin", Path)``, ``("local", Path)`` or ``("hub", id)``.

    A path that exists is local and never sent to the Hub; a name that can only be a path but does not
    exist is an error (``missing`` words it for the caller); anything else must be a valid Hub id.

    Args:
        name: what the user typed.
        revision: a Hub revision; refused for local paths.
        missing: how to word a path that does not exist.

    Returns:
        The kind and, for built-ins and local paths, the directory; for Hub ids, the id.

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
    from huggingface_hub.utils import validate_repo_id as hf_validate  # type: ignore[attr-defined]

    try:
        hf_validate(name)
    except HFValidationError:
        raise InputError(f"{name!r} is neither an existing directory nor a valid Hub model id.") from None
    return "hub", name


def validate_repo_id(repo_id: str) -> str:
    """Checks the ``namespace/name`` a push needs, the way the Hub does.

    Raises:
        InputError: not a valid model repo id, or no namespace.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate  # type: ignore[attr-defined]

    try:
        hf_validate(repo_id)
    except HFValidationError as exc:
        first = str(exc).split("\n")[0]
        raise InputError(f"{repo_id!r} is not a valid Hub repo id: {first}") from None
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InputError(f"{repo_id!r}: give the full repo id NAMESPACE/NAME (e.g. your-user/{repo_id.strip('/')}).")
    return repo_id


def model_name(name: str) -> str:
    """The last part of a path, Hub id or ``builtin:`` name (``builtin:tiny-gpt2`` -> ``tiny-gpt2``)."""
    return name.rstrip("/").split(":")[-1].split("/")[-1] or "model"


__all__ = ["Kind", "locate", "looks_like_path", "model_name", "validate_repo_id"]
