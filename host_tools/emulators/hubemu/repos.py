"""Hub emulator routes on repos themselves: create and delete, info (with file metadata), settings,
tree and paths-info listings (Link pagination), and whoami.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode

from host_tools.emulators.hubemu import listing
from host_tools.emulators.hubemu.store import REPO_TYPES, HubError

if TYPE_CHECKING:
    from host_tools.emulators.hubemu.server import Handler

NAME = r"[A-Za-z0-9][\w.-]*"  # each half of a repo id, "org/name"
MAX_FORM_BODY = 1 << 20


def repo_url_prefix(repo_type: str) -> str:
    """What comes before a repo id in the Hub's web URLs."""
    return {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]


def _named_repo(h: Handler, body: object) -> tuple[str, str]:
    """The repo type and id a create or delete body names; the organization defaults to the
    token's user, as on the Hub."""
    if not isinstance(body, dict):
        raise HubError(400, "the body must be a JSON object")
    name, org = body.get("name"), body.get("organization") or h.state.user
    repo_type = body.get("type") or "model"
    if repo_type not in REPO_TYPES:
        raise HubError(400, f"unknown repo type {repo_type!r}")
    if not isinstance(name, str) or not isinstance(org, str) or not re.fullmatch(
        rf"{NAME}/{NAME}", f"{org}/{name}"
    ):
        raise HubError(400, "a repo needs an organization and a name made of letters, digits, "
                       "'.', '_' and '-'")
    return repo_type, f"{org}/{name}"


def flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter, as true/True/1 (the clients differ)."""
    return query.get(name, ["false"])[0].lower() in ("true", "1")


def send_page(h: Handler, items: list[Any], base: str, query: dict[str, list[str]]) -> None:
    """One page of `items` from ?cursor=N, and a Link rel="next" to the next page if any."""
    try:
        start = int(query.get("cursor", ["0"])[0])
    except ValueError:
        raise HubError(400, "cursor must be a whole number") from None
    end = max(start, 0) + h.state.tree_page_size
    headers = {}
    if end < len(items):
        params = {k: v[0] for k, v in query.items()}
        params["cursor"] = str(end)
        headers["Link"] = f'<{h.base_url()}{base}?{urlencode(params)}>; rel="next"'
    h.send_json(200, items[max(start, 0):end], headers)


def create_repo(h: Handler) -> None:
    h.require_token()
    body = h.json_body()
    repo_type, repo_id = _named_repo(h, body)
    private = body.get("visibility") == "private" or body.get("private") is True
    repo, created = h.state.store.create(repo_type, repo_id, private)
    url = f"{h.base_url()}/{repo_url_prefix(repo_type)}{repo.repo_id}"
    if created:
        return h.send_json(200, {"url": url, "name": repo.repo_id})
    h.send_json(409, {"error": "You already created this repo", "url": url},
                {"X-Error-Message": "You already created this repo"})


def delete_repo(h: Handler) -> None:
    """DELETE /api/repos/delete {name, organization, type}."""
    h.require_token()
    repo_type, repo_id = _named_repo(h, h.json_body())
    h.repo(repo_type, repo_id)  # a private repo the token may not read is not found either
    h.state.store.delete(repo_type, repo_id)
    h.send_json(200, {})


def repo_info(h: Handler, repo_type: str, repo_id: str, revision: str,
              query: dict[str, list[str]]) -> None:
    """With ?blobs=true (files_metadata) each sibling also has its size, blobId and lfs."""
    repo = h.repo(repo_type, repo_id)
    commit = repo.resolve(revision)
    h.send_json(200, {
        "id": repo.repo_id,
        "sha": commit.oid,
        "private": repo.private,
        "gated": repo.gated,
        "lastModified": listing.iso_date(commit.ts),
        "siblings": listing.siblings(commit, flag(query, "blobs")),
    })


def update_settings(h: Handler, repo_type: str, repo_id: str) -> None:
    """PUT /api/{type}s/{id}/settings {visibility | private, gated}."""
    h.require_token()
    body = h.json_body()
    repo = h.repo(repo_type, repo_id)
    if not isinstance(body, dict) or not body:
        raise HubError(400, "the body must be a JSON object of settings to change")
    unknown = sorted(set(body) - {"visibility", "private", "gated"})
    if unknown:
        raise HubError(400, f"settings hubemu does not know: {', '.join(unknown)}")
    private, gated = body.get("private"), body.get("gated")
    if private is not None and not isinstance(private, bool):
        raise HubError(400, "private must be true or false")
    if "visibility" in body:
        if body["visibility"] not in ("public", "private"):
            raise HubError(400, f"visibility must be public or private, not {body['visibility']!r}")
        private = body["visibility"] == "private"
    if gated not in (None, False, "auto", "manual"):
        raise HubError(400, f"gated must be false, auto or manual, not {gated!r}")
    h.state.store.update_settings(repo, private, gated)
    h.send_json(200, {})


def tree(h: Handler, repo_type: str, repo_id: str, rest: str,
         query: dict[str, list[str]]) -> None:
    """GET /api/{type}s/{id}/tree/{rev}[/{folder}]: one page, the next linked (rel="next")."""
    repo = h.repo(repo_type, repo_id)
    rev, _, folder = rest.partition("/")
    commit = repo.resolve(unquote(rev))
    items = listing.tree_entries(commit, unquote(folder), flag(query, "recursive"))
    if flag(query, "expand"):
        items = listing.expanded(repo, commit, items)
    send_page(h, items, f"/api/{repo_type}s/{repo_id}/tree/{rest}", query)


def paths_info(h: Handler, repo_type: str, repo_id: str, revision: str) -> None:
    """POST /api/{type}s/{id}/paths-info/{rev}, form (paths=..&paths=..&expand=..) or JSON."""
    paths: Any
    if h.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        form = parse_qs(h.read_body(MAX_FORM_BODY).decode("utf-8", "replace"))
        paths, expand = form.get("paths"), flag(form, "expand")
    else:
        body = h.json_body()
        paths = body.get("paths") if isinstance(body, dict) else None
        expand = isinstance(body, dict) and body.get("expand") is True
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise HubError(400, "paths must be a non-empty list of paths")
    repo = h.repo(repo_type, repo_id)
    commit = repo.resolve(revision)
    items = listing.path_items(commit, paths)
    h.send_json(200, listing.expanded(repo, commit, items) if expand else items)


def whoami(h: Handler) -> None:
    """GET /api/whoami-v2: the emulator's one user, for any accepted token."""
    if h.bearer_token() is None:
        raise HubError(401, "Invalid credentials in Authorization header")
    h.require_token()
    user = h.state.user
    h.send_json(200, {
        "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
        "fullname": user, "isPro": False, "canPay": False, "orgs": [],
        "auth": {"type": "access_token",
                 "accessToken": {"displayName": "hubemu", "role": "write"}},
    })
