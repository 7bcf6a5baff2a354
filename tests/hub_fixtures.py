"""Pytest fixtures pointing ``huggingface_hub`` (and ``transformers``) at a loopback `HubServer`.

Import the fixture from ``conftest.py`` (or a test module)::

    from hub_fixtures import hub_server  # noqa: F401

`hub_server` starts a fresh server per test and yields it (``.endpoint``, ``.token``, ``.hf_home`` and the
introspection API of `HubServer`). During the test:

* env vars for subprocesses: ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_OFFLINE=0``,
  ``TRANSFORMERS_OFFLINE=0``, ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_HOME``/``HF_HUB_CACHE``/... under a temporary
  folder (staging/OIDC/legacy-token variables are removed);
* the values ``huggingface_hub`` computed at import time are patched in-process: ``constants.ENDPOINT``,
  ``constants.HUGGINGFACE_CO_URL_TEMPLATE``, ``constants.HF_URL_HOSTS``, ``constants.HF_HUB_OFFLINE``,
  ``constants.HF_HUB_DISABLE_XET``, cache/token paths, the module-level ``huggingface_hub.hf_api.api`` instance
  (behind ``huggingface_hub.create_repo`` & co), ``ENDPOINT`` copies imported by ``huggingface_hub.cli.auth`` and
  ``huggingface_hub.utils._git_credential``, the trusted-origin set used to follow redirects, transformers' cached
  ``HfApi`` and the ``HfFileSystem`` instance cache. The shared HTTP client is closed before and after.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

try:  # ``tests`` imported as a package
    from .hub_server import HubServer
except ImportError:  # ``tests/`` on sys.path (pytest's default rootdir-relative import mode)
    from hub_server import HubServer  # type: ignore[no-redef]

__all__ = ["HubServer", "hub_server", "patch_huggingface_hub"]

_ENV_TO_REMOVE = (
    "HUGGINGFACE_CO_STAGING",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_HUB_ENABLE_HF_TRANSFER",
)


def _close_hf_sessions() -> None:
    """Close huggingface_hub's shared HTTP client and the HfFileSystem instance cache (no-op if not imported)."""
    http = sys.modules.get("huggingface_hub.utils._http")
    if http is not None:
        http.close_session()
    hf_fs = sys.modules.get("huggingface_hub.hf_file_system")
    if hf_fs is not None:
        hf_fs.HfFileSystem.clear_instance_cache()


def patch_huggingface_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str, token: str, hf_home: Path) -> None:
    """Point huggingface_hub/transformers (in-process and in subprocesses) at ``endpoint`` using ``token``.

    Args:
        monkeypatch: the test's monkeypatch (everything is undone at teardown).
        endpoint: base URL of the Hub to use, e.g. ``http://127.0.0.1:12345``.
        token: token sent as ``Authorization: Bearer ...``.
        hf_home: folder used as ``HF_HOME`` (the cache lives in ``hf_home / "hub"``).
    """
    import huggingface_hub
    import huggingface_hub.hf_api
    import huggingface_hub.utils._http as hf_http
    from huggingface_hub import constants

    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": token,
        # huggingface_hub 2.4 uploads every LFS file through Xet storage whenever hf_xet is installed (no LFS
        # fallback, no server negotiation); the loopback Hub has no Xet storage, so its uploads take the LFS path.
        # Reads need no switch: the loopback answers without X-Xet headers, as the Hub does for a non-Xet file.
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
    }
    for name in _ENV_TO_REMOVE:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    host = urlsplit(endpoint).hostname or "127.0.0.1"
    patched_constants: dict[str, object] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {host}),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
    }
    for attribute, patched in patched_constants.items():
        monkeypatch.setattr(constants, attribute, patched, raising=False)

    # Redirect-following trusts a fixed set of origins computed at import time (huggingface_hub >= 2.2 only).
    if hasattr(hf_http, "_HUB_ORIGINS"):
        monkeypatch.setattr(hf_http, "_HUB_ORIGINS", frozenset(hf_http._HUB_ORIGINS | {hf_http._url_origin(endpoint)}))

    # `huggingface_hub.create_repo`, `upload_folder`, ... are bound methods of this import-time HfApi instance.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)

    # Modules that copied the endpoint with `from ..constants import ENDPOINT`.
    for module_name in ("huggingface_hub.cli.auth", "huggingface_hub.utils._git_credential"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "ENDPOINT"):
            monkeypatch.setattr(module, "ENDPOINT", endpoint)

    # transformers caches one HfApi instance (created with the endpoint of its time).
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        monkeypatch.setattr(transformers_hub, "_hf_api", None)


@pytest.fixture
def hub_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    """A running loopback Hub with huggingface_hub/transformers pointed at it (see module docstring)."""
    server = HubServer().start()
    hf_home = tmp_path / "hf_home"
    server.hf_home = hf_home
    _close_hf_sessions()
    try:
        patch_huggingface_hub(monkeypatch, server.endpoint, server.token, hf_home)
        yield server
    finally:
        _close_hf_sessions()
        # transformers may have created (and cached) its HfApi during the test: don't let it outlive the server.
        transformers_hub = sys.modules.get("transformers.utils.hub")
        cached_api = getattr(transformers_hub, "_hf_api", None)
        if cached_api is not None and getattr(cached_api, "endpoint", None) == server.endpoint:
            transformers_hub._hf_api = None  # type: ignore[union-attr]
        server.stop()
