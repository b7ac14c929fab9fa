"""Hub emulator routes on a repo's refs and history: the refs listing, the commit listing of a
revision (newest first, Link pagination), and creating or deleting branches and tags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from host_tools.emulators.hubemu import listing
from host_tools.emulators.hubemu.repos import send_page
from host_tools.emulators.hubemu.store import HubError

if TYPE_CHECKING:
    from host_tools.emulators.hubemu.server import Handler


def list_refs(h: Handler, repo_type: str, repo_id: str, query: dict[str, list[str]]) -> None:
    """GET /api/{type}s/{id}/refs[?include_prs=1]: branches and tags, each sorted by name."""
    repo = h.repo(repo_type, repo_id)

    def refs(names: dict[str, str], kind: str) -> list[dict[str, str]]:
        names = dict(names)  # a one-step copy: a writer may change them meanwhile
        return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": names[n]}
                for n in sorted(names)]

    answer: dict[str, list[dict[str, str]]] = {
        "branches": refs(repo.branches, "heads"), "converts": [], "tags": refs(repo.tags, "tags")}
    if query.get("include_prs"):
        answer["pullRequests"] = []  # hubemu has no pull requests
    h.send_json(200, answer)


def list_commits(h: Handler, repo_type: str, repo_id: str, rest: str,
                 query: dict[str, list[str]]) -> None:
    """GET /api/{type}s/{id}/commits/{rev}: the commits reachable from rev, newest first."""
    repo = h.repo(repo_type, repo_id)
    items = [listing.commit_item(c) for c in repo.history(unquote(rest))]
    send_page(h, items, f"/api/{repo_type}s/{repo_id}/commits/{rest}", query)


def branch(h: Handler, repo_type: str, repo_id: str, name: str) -> None:
    """POST /api/{type}s/{id}/branch/{name} {startingPoint?} creates it (from main by default),
    DELETE removes it."""
    h.require_token()
    body = h.json_body() if h.command == "POST" else None
    repo = h.repo(repo_type, repo_id)
    if h.command == "DELETE":
        h.state.store.set_ref(repo, "branch", name, None)
        return h.send_json(200, {})
    start = body.get("startingPoint") if isinstance(body, dict) else None
    if start is not None and not isinstance(start, str):
        raise HubError(400, "startingPoint must be a revision name or commit id")
    h.state.store.set_ref(repo, "branch", name, start or "main")
    h.send_json(200, {})


def tag(h: Handler, repo_type: str, repo_id: str, target: str) -> None:
    """POST /api/{type}s/{id}/tag/{revision} {tag, message?} tags that revision;
    DELETE /api/{type}s/{id}/tag/{tag} removes the tag."""
    h.require_token()
    body = h.json_body() if h.command == "POST" else None
    repo = h.repo(repo_type, repo_id)
    if h.command == "DELETE":
        h.state.store.set_ref(repo, "tag", target, None)
        return h.send_json(200, {})
    name = body.get("tag") if isinstance(body, dict) else None
    if not isinstance(name, str):
        raise HubError(400, "the body must name the tag: {\"tag\": NAME}")
    h.state.store.set_ref(repo, "tag", name, target)
    h.send_json(200, {})
