"""Preference data sets on the Hub, read through the ``datasets`` library (an optional dependency)."""

from __future__ import annotations

from typing import Any

from vhtool.errors import HubUnavailableError, InputError
from vhtool.hub.download import offline_mode
from vhtool.hub.errors import hub_errors


def need_datasets() -> Any:
    """The ``datasets`` module, or an :class:`InputError` saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise InputError(
            "reading Parquet, JSON arrays and Hub data sets needs the `datasets` library: "
            "pip install 'vhtool[evaluate]' (or pip install datasets), or give a JSONL file."
        ) from None
    return datasets


def load_hub_dataset(repo_id: str, *, split: str | None, revision: str | None = None) -> Any:
    """``datasets.load_dataset(repo_id, split=split)``: one split of a Hub data set (from the cache when offline).

    Raises:
        HubUnavailableError: offline (``HF_HUB_OFFLINE``) or unreachable and not cached, or no such data set (exit 2).
        InputError: no such split, or several splits and no ``split`` given.
    """
    datasets = need_datasets()
    from datasets.exceptions import DatasetNotFoundError

    hint = (
        f"Download it on a connected machine (`hf download {repo_id} --repo-type dataset`) and pass the local "
        "file or directory."
    )
    with hub_errors(repo_id, action="download", revision=revision, what="the data set"):
        try:
            loaded = datasets.load_dataset(repo_id, split=split, revision=revision)
        except DatasetNotFoundError:
            why = (
                "offline mode: HF_HUB_OFFLINE is set, and not in the local cache"
                if offline_mode()
                else "no such data set"
            )
            raise HubUnavailableError(f"cannot fetch the data set {repo_id!r} from the Hub ({why}). {hint}") from None
        except ConnectionError as exc:
            why = "offline mode: HF_HUB_OFFLINE is set" if offline_mode() else f"unreachable: {exc}"
            raise HubUnavailableError(
                f"cannot fetch the data set {repo_id!r} from the Hub ({why}, and not in the local cache). {hint}"
            ) from None
        except ValueError as exc:  # an unknown split, a bad config
            raise InputError(f"{repo_id}: {str(exc).strip().splitlines()[0]}") from None
    return pick_split(loaded, repo_id, split)


def pick_split(loaded: Any, name: str, split: str | None) -> Any:
    """A ``Dataset`` from what ``load_dataset`` returned: the one split, or an error listing them."""
    if hasattr(loaded, "keys") and not hasattr(loaded, "column_names"):  # a DatasetDict
        names = list(loaded.keys())
        if split is None and len(names) == 1:
            return loaded[names[0]]
        raise InputError(f"{name} has the splits {', '.join(names)}; choose one with --split.")
    return loaded


__all__ = ["load_hub_dataset", "need_datasets", "pick_split"]
