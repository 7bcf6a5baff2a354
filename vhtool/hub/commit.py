"""Writing to the Hub: create the repo and branch when missing, then one commit of adds and deletes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vhtool.hub.errors import hub_errors


@dataclass(frozen=True)
class Upload:
    """A file to add (from a local path, or generated content) or to delete (``delete``)."""

    path_in_repo: str
    local: Path | None = None
    content: bytes | None = None
    delete: bool = False


@dataclass(frozen=True)
class CommitOutcome:
    """What the Hub did."""

    oid: str
    url: str | None
    pr_url: str | None
    repo_created: bool
    branch_created: bool


def endpoint(token: str | bool | None) -> str:
    """The Hub endpoint vhtool talks to (``HF_ENDPOINT`` honoured)."""
    from huggingface_hub import HfApi, constants

    return HfApi(token=token).endpoint or constants.ENDPOINT


def commit_files(
    repo_id: str,
    uploads: list[Upload],
    *,
    branch: str,
    token: str | bool | None,
    create_repo: bool,
    private: bool,
    create_branch: bool,
    message: str,
    description: str,
    create_pr: bool,
    parent: str | None,
) -> CommitOutcome:
    """Creates the repo/branch when asked, then commits ``uploads`` in one commit (files passed by path).

    Raises:
        OperationError: the Hub refused or failed; the message says what was not done.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    repo_created = branch_created = False
    if create_repo:
        with hub_errors(repo_id, action=f"create {repo_id}", pushed_note="nothing was pushed"):
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            repo_created = True
    if create_branch:
        with hub_errors(repo_id, action=f"create the branch {branch!r}", pushed_note="nothing was pushed"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            branch_created = True
    ops: list[CommitOperationAdd | CommitOperationDelete] = []
    for u in uploads:
        if u.delete:
            ops.append(CommitOperationDelete(path_in_repo=u.path_in_repo))
        else:
            data: bytes | str = u.content if u.content is not None else str(u.local)
            ops.append(CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=data))
    with hub_errors(repo_id, action="commit", pushed_note="nothing was committed"):
        info = api.create_commit(
            repo_id,
            operations=ops,
            commit_message=message,
            commit_description=description,
            revision=branch,
            create_pr=create_pr,
            parent_commit=parent,
        )
    return CommitOutcome(
        oid=info.oid,
        url=info.commit_url,
        pr_url=info.pr_url,
        repo_created=repo_created,
        branch_created=branch_created,
    )


__all__ = ["CommitOutcome", "Upload", "commit_files", "endpoint"]
