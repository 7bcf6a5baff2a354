"""End-to-end tests of the loopback Hub server with real huggingface_hub / transformers calls (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from safetensors.numpy import save_file

from tests.hub_fixtures import HubServer

REPO = "user/ckpt"
TEXT = b"value head checkpoint\n"


@pytest.fixture
def local_files(tmp_path: Path) -> Iterator[Path]:
    """A folder with a small text file and a ~1 MB safetensors file."""
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(TEXT)
    rng = np.random.default_rng(0)
    save_file(
        {
            "v_head.weight": rng.standard_normal((1, 512)).astype(np.float32),
            "body": rng.standard_normal((512, 511)).astype(np.float32),
        },
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    yield folder


def _upload(api: HfApi, folder: Path, repo_id: str = REPO, create_pr: bool = False) -> CommitInfo:
    """Commit both files of ``folder`` with `create_commit`."""
    operations = [
        CommitOperationAdd(path_in_repo="notes.txt", path_or_fileobj=folder / "notes.txt"),
        CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=folder / "model.safetensors"),
    ]
    return api.create_commit(repo_id, operations=operations, commit_message="Add checkpoint", create_pr=create_pr)


def test_create_repo_whoami_and_visibility(hub_server: HubServer) -> None:
    api = HfApi()
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.startswith(hub_server.endpoint)
    assert api.whoami()["name"] == "user"
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.create_repo("bare-name").repo_id == "user/bare-name"  # namespace taken from the token

    # The Hub creates repos with an initial commit holding .gitattributes.
    repo = hub_server.repos[REPO]
    assert [c.title for c in repo.commits] == ["initial commit"]
    assert api.list_repo_files(REPO) == [".gitattributes"]
    assert api.model_info(REPO).sha == repo.branches["main"]

    api.create_repo("user/secret", private=True)
    assert hub_server.repos["user/secret"].private
    assert api.model_info("user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("user/secret")
    assert HfApi(token=False).repo_exists(REPO)


def test_commit_regular_and_lfs_files_then_skip_unchanged(hub_server: HubServer, local_files: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    info = _upload(api, local_files)

    repo = hub_server.repos[REPO]
    assert len(repo.commits) == 2
    commit = repo.commits[-1]
    assert info.oid == commit.id == repo.branches["main"]
    assert len(commit.id) == 40 and commit.title == "Add checkpoint"
    assert commit.files_changed == ("model.safetensors", "notes.txt")
    assert hub_server.file_bytes(REPO, "notes.txt") == TEXT
    weights = (local_files / "model.safetensors").read_bytes()
    assert hub_server.file_bytes(REPO, "model.safetensors") == weights
    assert hub_server.file_entry(REPO, "model.safetensors").lfs
    assert not hub_server.file_entry(REPO, "notes.txt").lfs

    preupload = hub_server.find_requests("POST", "/preupload/main")[-1]
    assert {f["path"] for f in preupload.json()["files"]} == {"notes.txt", "model.safetensors"}
    payload = hub_server.find_requests("POST", "/commit/main")[-1].ndjson()
    assert [line["key"] for line in payload] == ["header", "file", "lfsFile"]
    assert len(hub_server.lfs_upload_requests) == 1
    assert hub_server.lfs_upload_requests[0].body_size == len(weights)

    # Same content again: the LFS batch answers "already stored" (no PUT) and huggingface_hub 2.4 skips the
    # commit client-side because the preupload oids match the local ones.
    hub_server.clear_requests()
    again = _upload(api, local_files)
    assert again.oid == commit.id
    assert hub_server.lfs_upload_requests == []
    assert hub_server.find_requests("POST", "/commit/") == []
    assert len(hub_server.find_requests("POST", "lfs/objects/batch")) == 1
    assert len(repo.commits) == 2


def test_upload_folder_and_downloads(hub_server: HubServer, local_files: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=local_files, path_in_repo="ckpt")
    assert hub_server.list_files(REPO) == [".gitattributes", "ckpt/model.safetensors", "ckpt/notes.txt"]

    text_path = hf_hub_download(REPO, "ckpt/notes.txt")
    weights_path = hf_hub_download(REPO, "model.safetensors", subfolder="ckpt")
    assert Path(text_path).read_bytes() == TEXT
    assert Path(weights_path).read_bytes() == (local_files / "model.safetensors").read_bytes()
    assert str(hub_server.hf_home) in text_path  # the fixture isolates the cache

    entry = hub_server.file_entry(REPO, "ckpt/model.safetensors")
    meta = get_hf_file_metadata(hf_hub_url(REPO, "ckpt/model.safetensors"))
    assert (meta.etag, meta.size, meta.commit_hash) == (
        entry.sha256,
        entry.size,
        hub_server.repos[REPO].branches["main"],
    )
    head = hub_server.find_requests("HEAD", "/resolve/main/ckpt/model.safetensors")[-1]
    assert head.status == 200 and head.user == "user"

    # Listing APIs.
    tree = list(api.list_repo_tree(REPO))
    assert [(type(e), e.path) for e in tree] == [(RepoFile, ".gitattributes"), (RepoFolder, "ckpt")]
    nested = {e.path: e for e in api.list_repo_tree(REPO, path_in_repo="ckpt", expand=True)}
    assert nested["ckpt/model.safetensors"].lfs.sha256 == entry.sha256  # type: ignore[union-attr]
    assert nested["ckpt/notes.txt"].last_commit.title == "Upload folder using huggingface_hub"  # type: ignore[union-attr]
    infos = api.get_paths_info(REPO, ["ckpt/notes.txt", "ckpt", "missing.txt"])
    assert sorted(i.path for i in infos) == ["ckpt", "ckpt/notes.txt"]
    assert api.file_exists(REPO, "ckpt/notes.txt") and not api.file_exists(REPO, "notes.txt")
    assert [c.title for c in api.list_repo_commits(REPO)] == ["Upload folder using huggingface_hub", "initial commit"]

    # Deleting a folder.
    api.delete_folder("ckpt", repo_id=REPO)
    assert hub_server.list_files(REPO) == [".gitattributes"]
    assert hub_server.commits(REPO)[-1].deleted == ("ckpt/model.safetensors", "ckpt/notes.txt")


def test_safetensors_metadata_uses_range_reads(hub_server: HubServer, local_files: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    _upload(api, local_files)
    meta = api.get_safetensors_metadata(REPO)
    tensors = meta.files_metadata["model.safetensors"].tensors
    assert tensors["v_head.weight"].shape == [1, 512] and tensors["body"].dtype == "F32"
    assert meta.parameter_count == {"F32": 512 + 512 * 511}
    ranged = hub_server.find_requests("GET", "/resolve/main/model.safetensors")
    assert ranged and all(r.status == 206 and r.headers.get("range") for r in ranged)

    url = hf_hub_url(REPO, "model.safetensors")
    headers = {"authorization": f"Bearer {hub_server.token}"}
    size = hub_server.file_entry(REPO, "model.safetensors").size
    tail = httpx2.get(url, headers={**headers, "Range": "bytes=-8"})
    assert tail.status_code == 206 and tail.headers["Content-Range"] == f"bytes {size - 8}-{size - 1}/{size}"
    assert tail.content == hub_server.file_bytes(REPO, "model.safetensors")[-8:]
    assert httpx2.get(url, headers={**headers, "Range": f"bytes={size}-"}).status_code == 416


def test_missing_entries_revisions_and_repos(hub_server: HubServer, local_files: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    _upload(api, local_files)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "does-not-exist.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "notes.txt", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/nope", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="0" * 40)
    missing = hub_server.find_requests("HEAD", "does-not-exist.json")[-1]
    assert missing.status == 404
    # huggingface_hub cached the non-existence of the file under the commit the server reported.
    commit = hub_server.repos[REPO].branches["main"]
    no_exist = Path(hf_constants.HF_HUB_CACHE) / "models--user--ckpt" / ".no_exist" / commit / "does-not-exist.json"
    assert no_exist.exists()
    # Downloads by commit sha work too.
    assert Path(hf_hub_download(REPO, "notes.txt", revision=commit)).read_bytes() == TEXT


def test_create_pr_branches_and_parent_commit(hub_server: HubServer, local_files: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    main_before = hub_server.repos[REPO].branches["main"]
    info = _upload(api, local_files, create_pr=True)
    assert info.pr_url == f"{hub_server.endpoint}/{REPO}/discussions/1"
    assert info.pr_revision == "refs/pr/1"
    repo = hub_server.repos[REPO]
    assert repo.branches["main"] == main_before  # main untouched
    assert repo.pull_requests[1].head == info.oid
    assert hub_server.file_bytes(REPO, "notes.txt", revision="refs/pr/1") == TEXT
    assert Path(hf_hub_download(REPO, "notes.txt", revision="refs/pr/1")).read_bytes() == TEXT
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests or []] == ["refs/pr/1"]
    # Push a second commit to the PR.
    api.upload_file(path_or_fileobj=b"more", path_in_repo="more.txt", repo_id=REPO, revision="refs/pr/1")
    assert hub_server.list_files(REPO, "refs/pr/1") == [".gitattributes", "model.safetensors", "more.txt", "notes.txt"]

    api.create_branch(REPO, branch="dev")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, revision="dev")
    assert hub_server.list_files(REPO, "dev") == [".gitattributes", "x.txt"]
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_commit(
            REPO,
            operations=[CommitOperationAdd(path_in_repo="y.txt", path_or_fileobj=b"y")],
            commit_message="stale",
            parent_commit=main_before,
            revision="dev",
        )
    assert excinfo.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.create_commit(REPO, operations=[CommitOperationDelete("nope.txt")], commit_message="rm", revision="dev")


def test_auth_failures_and_token_never_logged(hub_server: HubServer, local_files: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    bad = HfApi(token="hf_definitely_wrong")
    with pytest.raises(HfHubHTTPError) as excinfo:
        bad.create_repo("user/other")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        _upload(bad, local_files)
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        bad.model_info(REPO)  # an invalid token is rejected even for public reads, like on the Hub
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        _upload(HfApi(token=False), local_files)  # anonymous write
    assert excinfo.value.response.status_code == 401

    hub_server.add_token("hf_read_only", "reader", write=False, namespaces=())
    with pytest.raises(HfHubHTTPError) as excinfo:
        _upload(HfApi(token="hf_read_only"), local_files)
    assert excinfo.value.response.status_code == 403

    assert hub_server.repos[REPO].commits[-1].title == "initial commit"
    dump = repr(hub_server.requests) + json.dumps([r.headers for r in hub_server.requests])
    assert hub_server.token not in dump and "hf_definitely_wrong" not in dump and "hf_read_only" not in dump
    assert all("authorization" not in {k.lower() for k in r.headers} for r in hub_server.requests)


def test_fault_injection(hub_server: HubServer, local_files: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    hub_server.fail_next(status=500, path_contains="/commit/main")
    with pytest.raises(HfHubHTTPError) as excinfo:
        _upload(api, local_files)
    assert excinfo.value.response.status_code == 500
    assert hub_server.pending_faults == 0
    assert len(hub_server.repos[REPO].commits) == 1
    _upload(api, local_files)  # next attempt goes through; LFS bytes were already uploaded by the failed one
    assert len(hub_server.repos[REPO].commits) == 2
    assert len(hub_server.lfs_upload_requests) == 1

    hub_server.fail_next(status=403, path_contains="/resolve/", method="HEAD")
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.file_exists(REPO, "notes.txt")
    assert excinfo.value.response.status_code == 403
    assert api.file_exists(REPO, "notes.txt")


def test_server_side_empty_commit_is_recorded(hub_server: HubServer) -> None:
    hub_server.commit_files(REPO, {"a.txt": b"a"})
    body = json.dumps({"key": "header", "value": {"summary": "empty", "description": ""}}) + "\n"
    response = httpx2.post(
        f"{hub_server.endpoint}/api/models/{REPO}/commit/main",
        content=body.encode(),
        headers={"authorization": f"Bearer {hub_server.token}", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    commits = hub_server.commits(REPO)
    assert response.json()["commitOid"] == commits[-1].id and commits[-1].is_empty
    assert [c.title for c in hub_server.history(REPO)] == ["empty", "Seed files", "initial commit"]


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate another test/conftest having switched huggingface_hub offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def test_fixture_forces_online_mode_and_subprocess_env(offline_env: None, hub_server: HubServer) -> None:
    hub_server.commit_files(REPO, {"a.txt": b"from subprocess"})
    assert Path(hf_hub_download(REPO, "a.txt")).read_bytes() == b"from subprocess"
    code = "from huggingface_hub import hf_hub_download as d; print(open(d('user/ckpt', 'a.txt')).read())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "from subprocess"
    assert hub_server.find_requests("GET", "/resolve/main/a.txt")


@pytest.mark.slow
def test_transformers_from_pretrained_by_repo_id(hub_server: HubServer, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "tiny")
    HfApi().create_repo("user/tiny")
    HfApi().upload_folder(repo_id="user/tiny", folder_path=tmp_path / "tiny")
    hub_server.clear_requests()

    loaded = transformers.AutoModelForCausalLM.from_pretrained("user/tiny")
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    # transformers probes optional files (e.g. adapter_config.json): the 404 EntryNotFound answers must be handled.
    assert any(r.status == 404 for r in hub_server.find_requests("HEAD", "/resolve/"))
    assert hub_server.find_requests("GET", "/resolve/") and all(
        r.status in (200, 206, 404) for r in hub_server.requests
    )
