"""Hub emulator routes on repos themselves: create (POST /api/repos/create), info
(GET /api/{type}s/{id}[/revision/{rev}]) and tree listings with Link pagination.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlencode

from host_tools.emulators.hubemu.store import REPO_TYPES, HubError, tree_entries

if TYPE_CHECKING:
    from host_tools.emulators.hubemu.server import Handler

NAME = r"[A-Za-z0-9][\w.-]*"  # each half of a repo id, "org/name"


def repo_url_prefix(repo_type: str) -> str:
    """What comes before a repo id in the Hub's web URLs."""
    return {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]


def create_repo(h: Handler) -> None:
    h.require_token()
    body = h.json_body()
    name, org = body.get("name"), body.get("organization")
    repo_type = body.get("type") or "model"
    if repo_type not in REPO_TYPES:
        raise HubError(400, f"unknown repo type {repo_type!r}")
    if not isinstance(name, str) or not isinstance(org, str) or not re.fullmatch(
        rf"{NAME}/{NAME}", f"{org}/{name}"
    ):
        raise HubError(400, "a repo needs an organization and a name made of letters, digits, "
                       "'.', '_' and '-'")
    private = body.get("visibility") == "private" or body.get("private") is True
    repo, created = h.state.store.create(repo_type, f"{org}/{name}", private)
    url = f"{h.base_url()}/{repo_url_prefix(repo_type)}{repo.repo_id}"
    if created:
        return h.send_json(200, {"url": url, "name": repo.repo_id})
    h.send_json(409, {"error": "You already created this repo", "url": url},
                {"X-Error-Message": "You already created this repo"})


def repo_info(h: Handler, repo_type: str, repo_id: str, revision: str) -> None:
    repo = h.repo(repo_type, repo_id)
    commit = repo.resolve(revision)
    h.send_json(200, {
        "id": repo.repo_id,
        "sha": commit.oid,
        "private": repo.private,
        "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.ts)),
        "siblings": [{"rfilename": p} for p in sorted(commit.files)],
    })


def tree(h: Handler, repo_type: str, repo_id: str, rest: str,
         query: dict[str, list[str]]) -> None:
    """GET /api/{type}s/{id}/tree/{rev}[/{folder}]: one page, the next linked (rel="next")."""
    repo = h.repo(repo_type, repo_id)
    rev, _, folder = rest.partition("/")
    commit = repo.resolve(unquote(rev))
    recursive = query.get("recursive", ["false"])[0].lower() == "true"
    items = tree_entries(commit, unquote(folder), recursive)
    start = int(query.get("cursor", ["0"])[0])
    end = start + h.state.tree_page_size
    headers = {}
    if end < len(items):
        params = {k: v[0] for k, v in query.items()}
        params["cursor"] = str(end)
        base = f"/api/{repo_type}s/{repo_id}/tree/{rest}"
        headers["Link"] = f'<{h.base_url()}{base}?{urlencode(params)}>; rel="next"'
    h.send_json(200, items[start:end], headers)
