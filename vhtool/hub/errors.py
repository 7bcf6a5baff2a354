"""The one translation of Hub exceptions into :class:`~vhtool.errors.VhtoolError`s, and quiet Hub calls.

Every call vhtool makes to ``huggingface_hub`` runs inside :func:`hub_errors`, so a user sees one
line that names the repo, says what failed and what to do, whichever command hit it. One exit-code
rule for the network, reading and pushing alike: offline mode (``HF_HUB_OFFLINE=1``, a setting) is
exit 2 (:class:`~vhtool.errors.HubUnavailableError`); a Hub that cannot be reached or fails
(connection refused, DNS, timeout, 5xx: transient) is exit 1 (:class:`~vhtool.errors.HubUnreachableError`). Only what
``huggingface_hub`` exports publicly is caught: its ``huggingface_hub.errors`` classes, and for
transport failures (connection refused, DNS, timeouts) the ``httpx`` module it re-exports as
``huggingface_hub.utils.httpx`` (the exceptions it raises from ``model_info`` and header reads).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from vhtool.errors import (
    CheckpointError,
    HubUnavailableError,
    HubUnreachableError,
    InputError,
    OperationError,
    VhtoolError,
)

#: What to do when a Hub model cannot be had here; every "offline / unreachable" message ends with it.
TOKEN_HELP = "log in with `hf auth login` or set HF_TOKEN, or pass --token"


def offline_hint(repo_id: str, *, what: str = "the model") -> str:
    """The advice for a Hub id that cannot be fetched: download it elsewhere, or use a built-in model."""
    hint = f"Download it on a connected machine (`hf download {repo_id}`) and pass the local directory"
    return hint + (", or try a built-in model such as builtin:tiny-gpt2." if what == "the model" else ".")


def unavailable(repo_id: str, why: str, *, what: str = "the model") -> HubUnavailableError:
    """The exit-2 error of a Hub id that cannot be fetched by setting (offline mode), saying why and what to do."""
    return HubUnavailableError(
        f"cannot fetch {what} {repo_id!r} from the Hub ({why}). {offline_hint(repo_id, what=what)}"
    )


def unreachable(repo_id: str, why: str, *, what: str = "the model") -> HubUnreachableError:
    """The exit-1 error of a Hub id that cannot be fetched now (the Hub unreachable or failing, not cached)."""
    return HubUnreachableError(
        f"cannot fetch {what} {repo_id!r} from the Hub ({why}); try again later. {offline_hint(repo_id, what=what)}"
    )


def _offline() -> bool:
    """Whether offline mode is set (huggingface_hub's reading of ``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def transport_errors() -> tuple[type[Exception], ...]:
    """The exception classes huggingface_hub lets through when the endpoint cannot be reached."""
    # huggingface_hub re-exports its HTTP client module as `huggingface_hub.utils.httpx` (in its __all__).
    from huggingface_hub.utils import httpx  # type: ignore[attr-defined]

    return (httpx.TransportError, httpx.TooManyRedirects, httpx.DecodingError)


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _server_detail(exc: BaseException) -> str:
    server = (getattr(exc, "server_message", None) or "").strip().split("\n")[0]
    return f" ({server})" if server else ""


@contextmanager
def quiet_hub() -> Iterator[None]:
    """Silences huggingface_hub's own log lines ("Retrying in 8s", warnings) for the calls inside."""
    from huggingface_hub.utils import logging as hf_logging

    logger = hf_logging.get_logger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Switches huggingface_hub's tqdm bars off for the calls inside (header reads draw one per sharded repo)."""
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not bars_were_off:
            enable_progress_bars()


@contextmanager
def hub_errors(
    repo_id: str,
    *,
    action: str = "fetch",
    revision: str | None = None,
    what: str = "the model",
    pushed_note: str | None = None,
) -> Iterator[None]:
    """Runs Hub calls quietly and turns what huggingface_hub raises into one-line VhtoolErrors.

    The network, reading and writing alike: offline mode -> :class:`HubUnavailableError` (exit 2); the Hub
    unreachable (refused, DNS, timeout) or failing (5xx) -> :class:`HubUnreachableError` (exit 1).

    Reading (``pushed_note`` None): no such repo -> :class:`HubUnavailableError` (exit 2); a gated repo, a
    missing revision or a repo that is not a checkpoint -> :class:`InputError` (exit 2); a malformed remote
    header -> :class:`CheckpointError`; other HTTP failures -> :class:`OperationError` (exit 1).

    Writing (``pushed_note`` given, e.g. "nothing was pushed"): every other failure is an
    :class:`OperationError` (exit 1) ending with that note. Tokens never appear in a message.

    Args:
        repo_id: the repo the calls are about; every message names it.
        action: what was being done, as a verb phrase ("read the headers of", "create the branch 'dev'").
        revision: the revision asked for, named when it does not exist.
        what: what the repo holds, for messages ("the model", "the adapter").
        pushed_note: for writes, what the user should know was not done.

    Raises:
        VhtoolError: the translated error (VhtoolErrors raised inside pass through unchanged).
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        NotASafetensorsRepoError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        SafetensorsParsingError,
    )

    transport = transport_errors()

    def offline() -> HubUnavailableError:
        """The one error of offline mode (a setting: exit 2), for a push and for a read."""
        if pushed_note is not None:
            return HubUnavailableError(f"cannot {action}: HF_HUB_OFFLINE is set; unset it to push ({pushed_note}).")
        return unavailable(repo_id, "offline mode: HF_HUB_OFFLINE is set, and not in the local cache", what=what)

    try:
        with quiet_hub():
            yield
    except VhtoolError:
        raise
    except OfflineModeIsEnabled:
        raise offline() from None
    except GatedRepoError:
        message = f"{repo_id}: gated repo; log in (`hf auth login`) with a token that has access"
        if pushed_note is not None:
            raise OperationError(f"{message} ({pushed_note}).") from None
        raise InputError(message + ".") from None
    except RevisionNotFoundError:
        message = f"{repo_id}: revision {revision!r} does not exist on the Hub"
        if pushed_note is not None:
            raise OperationError(f"{message} ({pushed_note}).") from None
        raise InputError(message + "; check the branch, tag or commit (`--revision`).") from None
    except RepositoryNotFoundError:
        noun = "model" if what == "the model" else what.removeprefix("the ")
        message = f"{repo_id}: no such {noun} on the Hub (or no access with this token; `hf auth login`)"
        if pushed_note is not None:
            raise OperationError(f"{message} ({pushed_note}).") from None
        raise HubUnavailableError(message + ".") from None
    except RemoteEntryNotFoundError as exc:
        raise CheckpointError(f"{repo_id}: a file the checkpoint names is missing from the repo ({exc}).") from None
    except LocalEntryNotFoundError:
        # not in the cache, and the Hub was not asked: offline mode (a setting, 2) or unreachable (transient, 1)
        if _offline():
            raise offline() from None
        if pushed_note is not None:
            raise HubUnreachableError(f"cannot {action}: the Hub is unreachable; {pushed_note}.") from None
        raise unreachable(repo_id, "the Hub is unreachable, and it is not in the local cache", what=what) from None
    except NotASafetensorsRepoError:
        raise InputError(
            f"{repo_id}: not a checkpoint (no model.safetensors or model.safetensors.index.json)."
        ) from None
    except SafetensorsParsingError as exc:
        raise CheckpointError(f"{repo_id}: {exc}") from None
    except HfHubHTTPError as exc:
        raise _http_error(exc, repo_id, action, pushed_note) from None
    except ConnectionError as exc:
        # hf_xet (Xet storage, the default upload path when it is installed) raises the builtin for a transport
        # or server failure of the token endpoint or the storage service: transient, like a 5xx.
        msg = f"the Hub's Xet storage failed while trying to {action} {repo_id} ({exc}); try again later"
        raise HubUnreachableError(f"{msg} ({pushed_note})." if pushed_note is not None else msg + ".") from None
    except transport as exc:
        if pushed_note is not None:
            raise HubUnreachableError(
                f"cannot {action}: the Hub is unreachable ({type(exc).__name__}: {exc}); {pushed_note}."
            ) from None
        raise unreachable(repo_id, f"the Hub is unreachable: {type(exc).__name__}: {exc}", what=what) from None


def _http_error(exc: BaseException, repo_id: str, action: str, pushed_note: str | None) -> VhtoolError:
    status = _status_of(exc)
    detail = _server_detail(exc)
    if status == 401:
        msg = f"the Hub rejected the token (401 Unauthorized) for {repo_id}{detail}; {TOKEN_HELP}"
    elif status == 403:
        verb = "write to" if pushed_note is not None else "read"
        msg = f"the token may not {verb} {repo_id} (403 Forbidden){detail}; use a token with access"
    elif status is not None and status >= 500:
        msg = f"the Hub failed with {status} while trying to {action} {repo_id}{detail}; try again later"
        return HubUnreachableError(f"{msg} ({pushed_note})." if pushed_note is not None else msg + ".")
    elif status == 412:
        msg = f"{repo_id} changed on the Hub while pushing (412){detail}; run the push again"
    else:
        msg = f"cannot {action} {repo_id}: {status} {detail.strip(' ()') or type(exc).__name__}"
    if pushed_note is not None:
        return OperationError(f"{msg} ({pushed_note}).")
    return OperationError(msg + ".")


__all__ = [
    "TOKEN_HELP",
    "hub_errors",
    "no_progress_bars",
    "offline_hint",
    "quiet_hub",
    "transport_errors",
    "unavailable",
    "unreachable",
]
