"""The Hub emulator's refs, history, path metadata, settings, deletion and whoami, through the
official huggingface_hub client: branches and tags point at commits, commits list newest first
through their parents, an upload to a branch leaves main alone, and bad input gets the Hub's
error types."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx
import huggingface_hub as hh
import pytest
from huggingface_hub import errors
from huggingface_hub.hf_api import BlobLfsInfo, GitRefInfo, RepoFile, RepoFolder

from host_tools.emulators.hubemu import HubEmulator
from host_tools.emulators.hubemu.store import GITATTRIBUTES
from tests.utils import wait_until
from tests.utils.hubemu import CANARY, OTHER_TOKEN, hub_api

REPO_ID = "acme/artifacts"
AUTH = {"Authorization": f"Bearer {CANARY}"}


def _upload(api: hh.HfApi, path: str, data: bytes, title: str, revision: str | None = None,
            description: str | None = None) -> str:
    return api.upload_file(path_or_fileobj=io.BytesIO(data), path_in_repo=path, repo_id=REPO_ID,
                           revision=revision, commit_message=title,
                           commit_description=description).oid


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_branches_tags_and_history(hub: HubEmulator, tmp_path: Path):
    api = hub_api(hub)
    api.create_repo(REPO_ID)
    c0 = api.repo_info(REPO_ID).sha
    c1 = _upload(api, "a.json", b'{"a": 1}', "add a", description="first file")
    api.create_branch(REPO_ID, branch="dev")
    c2 = _upload(api, "b.json", b'{"b": 2}', "add b on dev", revision="dev")
    # The branch upload moved dev only.
    assert api.repo_info(REPO_ID).sha == c1
    assert api.repo_info(REPO_ID, revision="dev").sha == c2
    assert api.file_exists(REPO_ID, "b.json", revision="dev")
    assert not api.file_exists(REPO_ID, "b.json")
    got = api.hf_hub_download(REPO_ID, "b.json", revision="dev", local_dir=tmp_path / "dl")
    assert Path(got).read_bytes() == b'{"b": 2}'

    api.create_branch(REPO_ID, branch="feat/old", revision=c0)
    api.create_tag(REPO_ID, tag="v1", revision="dev")
    api.create_tag(REPO_ID, tag="v0", tag_message="the first")
    refs = api.list_repo_refs(REPO_ID)
    assert refs.branches == [GitRefInfo("dev", "refs/heads/dev", c2),
                             GitRefInfo("feat/old", "refs/heads/feat/old", c0),
                             GitRefInfo("main", "refs/heads/main", c1)]
    assert refs.tags == [GitRefInfo("v0", "refs/tags/v0", c1), GitRefInfo("v1", "refs/tags/v1", c2)]
    assert refs.converts == [] and refs.pull_requests is None
    assert api.list_repo_refs(REPO_ID, include_pull_requests=True).pull_requests == []

    history = api.list_repo_commits(REPO_ID, revision="dev")
    assert [(c.commit_id, c.title, c.message, c.authors) for c in history] == [
        (c2, "add b on dev", "", ["hubemu-user"]),
        (c1, "add a", "first file", ["hubemu-user"]),
        (c0, "initial commit", "", ["system"]),
    ]
    assert history[0].created_at >= history[1].created_at >= history[2].created_at
    for revision in ("v1", c2, c2[:7], "refs/heads/dev"):
        assert [c.commit_id for c in api.list_repo_commits(REPO_ID, revision=revision)] == [
            c2, c1, c0]
    assert [c.commit_id for c in api.list_repo_commits(REPO_ID, revision="feat/old")] == [c0]
    # A branch started from an old commit grows from there; main still has its own line.
    c3 = _upload(api, "c.json", b"{}", "add c on feat/old", revision="feat/old")
    assert [c.commit_id for c in api.list_repo_commits(REPO_ID, revision="feat/old")] == [c3, c0]
    assert [c.commit_id for c in api.list_repo_commits(REPO_ID)] == [c1, c0]

    # Longer histories come in pages (4 per page in the fixture), followed through Link.
    more = [_upload(api, f"n{i}.json", b"%d" % i, f"n{i}") for i in range(5)]
    hub.clear_requests()
    assert [c.commit_id for c in api.list_repo_commits(REPO_ID)] == [*more[::-1], c1, c0]

    def pages() -> list[str]:
        return [r.path for r in hub.requests() if "/commits/" in r.path]

    # The server logs a request once its answer is out: wait for the second page's record.
    wait_until(lambda: len(pages()) >= 2, timeout=5, what="both pages logged")
    assert pages() == ["/api/models/acme/artifacts/commits/main",
                       "/api/models/acme/artifacts/commits/main?cursor=4"]

    api.delete_branch(REPO_ID, branch="dev")
    api.delete_tag(REPO_ID, tag="v0")
    refs = api.list_repo_refs(REPO_ID)
    assert [b.name for b in refs.branches] == ["feat/old", "main"]
    assert refs.tags == [GitRefInfo("v1", "refs/tags/v1", c2)]  # the tag keeps dev's commit
    assert api.repo_info(REPO_ID, revision="v1").sha == c2


def test_bad_refs_and_revisions(hub: HubEmulator):
    api = hub_api(hub)
    api.create_repo(REPO_ID)
    c1 = _upload(api, "a.json", b"{}", "add a")
    api.create_branch(REPO_ID, branch="dev")
    api.create_tag(REPO_ID, tag="v1")

    with pytest.raises(errors.RevisionNotFoundError) as err:
        api.list_repo_commits(REPO_ID, revision="nope")
    assert err.value.server_message == "Invalid rev id: nope"
    with pytest.raises(errors.RevisionNotFoundError):
        api.get_paths_info(REPO_ID, ["a.json"], revision="nope")
    with pytest.raises(errors.RevisionNotFoundError):
        api.create_branch(REPO_ID, branch="x", revision="0" * 40)
    with pytest.raises(errors.RevisionNotFoundError):
        api.create_tag(REPO_ID, tag="v9", revision="nope")
    with pytest.raises(errors.RevisionNotFoundError):
        _upload(api, "b.json", b"{}", "to nowhere", revision="nope")
    with pytest.raises(errors.RevisionNotFoundError):
        api.delete_tag(REPO_ID, tag="nope")
    with pytest.raises(errors.RevisionNotFoundError):
        api.delete_branch(REPO_ID, branch="nope")

    with pytest.raises(errors.HfHubHTTPError) as err:
        api.create_branch(REPO_ID, branch="dev")
    assert (err.value.response.status_code, err.value.server_message) == (
        409, "Reference already exists: refs/heads/dev")
    api.create_branch(REPO_ID, branch="dev", exist_ok=True)
    with pytest.raises(errors.HfHubHTTPError) as err:
        api.create_tag(REPO_ID, tag="v1")
    assert (err.value.response.status_code, err.value.server_message) == (
        409, "Reference already exists: refs/tags/v1")
    api.create_tag(REPO_ID, tag="v1", exist_ok=True)

    for name, problem in [("bad..name", "git does not allow it as a ref name"),
                          ("refs/pr/1", "refs/ names are reserved"),
                          ("a b", "git does not allow it as a ref name"),
                          ("f" * 40, "it looks like a commit id")]:
        with pytest.raises(errors.BadRequestError) as err:
            api.create_branch(REPO_ID, branch=name)
        assert err.value.server_message == f"Invalid branch name {name!r}: {problem}"
    with pytest.raises(errors.BadRequestError) as err:
        _upload(api, "b.json", b"{}", "onto a tag", revision="v1")
    assert err.value.server_message == (
        "Invalid rev id: v1 is not a branch; commits go to a branch")
    with pytest.raises(errors.BadRequestError) as err:
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="pr.json", repo_id=REPO_ID,
                        create_pr=True)
    assert err.value.server_message == "hubemu has no pull requests: commit to a branch instead"
    with pytest.raises(errors.HfHubHTTPError) as err:
        api.delete_branch(REPO_ID, branch="main")
    assert (err.value.response.status_code, err.value.server_message) == (
        403, "The default branch main cannot be deleted")
    with pytest.raises(errors.HfHubHTTPError) as err:
        hub_api(hub, OTHER_TOKEN).create_branch(REPO_ID, branch="intruder")
    assert err.value.response.status_code == 401
    r = httpx.post(f"{hub.url}/api/models/{REPO_ID}/tag/main", json={"nope": 1}, headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (400, 'the body must name the tag: {"tag": NAME}')
    r = httpx.get(f"{hub.url}/api/models/{REPO_ID}/commits/main?cursor=x", headers=AUTH)
    assert (r.status_code, r.json()) == (400, {"error": "cursor must be a whole number"})

    # Nothing above changed a ref.
    refs = api.list_repo_refs(REPO_ID)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("dev", c1), ("main", c1)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", c1)]


def test_paths_info_and_files_metadata(hub: HubEmulator):
    api = hub_api(hub)
    api.create_repo(REPO_ID)
    meta, weights = b'{"loss": 0.1}', bytes(range(256)) * 20
    c1 = _upload(api, "runs/r1/metrics.json", meta, "metrics")
    c2 = _upload(api, "runs/r1/model.pt", weights, "weights")
    lfs = BlobLfsInfo(size=5120, sha256=hashlib.sha256(weights).hexdigest(), pointer_size=129)

    infos = api.get_paths_info(REPO_ID, ["runs/r1/model.pt", "runs/r1/metrics.json", "runs",
                                         "missing.txt", "runs/"])
    assert [type(i) for i in infos] == [RepoFile, RepoFile, RepoFolder]
    pt, js, folder = infos
    assert (pt.path, pt.size, pt.blob_id, pt.lfs) == ("runs/r1/model.pt", 5120, _blob(weights), lfs)
    assert (js.path, js.size, js.blob_id, js.lfs) == ("runs/r1/metrics.json", 13, _blob(meta), None)
    assert folder.path == "runs" and len(folder.tree_id) == 40
    assert pt.last_commit is None
    expanded = api.get_paths_info(REPO_ID, ["runs/r1/metrics.json", "runs"], expand=True)
    assert [(i.last_commit.oid, i.last_commit.title) for i in expanded] == [
        (c1, "metrics"), (c2, "weights")]
    assert api.get_paths_info(REPO_ID, "runs/r1/model.pt", revision=c1) == []

    info = api.model_info(REPO_ID, files_metadata=True)
    assert [(s.rfilename, s.size, s.blob_id, s.lfs) for s in info.siblings] == [
        (".gitattributes", len(GITATTRIBUTES), _blob(GITATTRIBUTES.encode()), None),
        ("runs/r1/metrics.json", 13, _blob(meta), None),
        ("runs/r1/model.pt", 5120, _blob(weights), lfs),
    ]
    plain = api.model_info(REPO_ID)
    assert [(s.rfilename, s.size, s.lfs) for s in plain.siblings] == [
        (".gitattributes", None, None), ("runs/r1/metrics.json", None, None),
        ("runs/r1/model.pt", None, None)]
    tree = {e.path: e for e in api.list_repo_tree(REPO_ID, "runs/r1", expand=True)}
    assert tree["runs/r1/model.pt"].lfs == lfs
    assert tree["runs/r1/model.pt"].last_commit.oid == c2

    r = httpx.post(f"{hub.url}/api/models/{REPO_ID}/paths-info/main", json={"paths": []},
                   headers=AUTH)
    assert (r.status_code, r.json()) == (400, {"error": "paths must be a non-empty list of paths"})


def test_settings_delete_and_whoami(hub: HubEmulator):
    api = hub_api(hub)
    assert api.whoami()["name"] == "hubemu-user"
    with pytest.raises(errors.HfHubHTTPError) as err:
        hub_api(hub, OTHER_TOKEN).whoami()
    assert err.value.response.status_code == 401
    assert str(err.value).startswith("Invalid user token.")
    # A repo id without a namespace goes to the token's user, as on the Hub.
    assert api.create_repo("solo") == f"{hub.url}/hubemu-user/solo"

    api.create_repo(REPO_ID)
    assert api.model_info(REPO_ID).private is False
    api.update_repo_settings(REPO_ID, private=True)
    assert api.model_info(REPO_ID).private is True
    with pytest.raises(errors.RepositoryNotFoundError):
        hub_api(hub, None).model_info(REPO_ID)
    api.update_repo_settings(REPO_ID, gated="manual")
    info = api.model_info(REPO_ID)
    assert (info.private, info.gated) == (True, "manual")
    api.update_repo_settings(REPO_ID, visibility="public", gated=False)
    info = hub_api(hub, None).model_info(REPO_ID)
    assert (info.private, info.gated) == (False, False)
    url = f"{hub.url}/api/models/{REPO_ID}/settings"
    for body, message in [
        ({"visibility": "secret"}, "visibility must be public or private, not 'secret'"),
        ({"gated": "sometimes"}, "gated must be false, auto or manual, not 'sometimes'"),
        ({"private": "yes"}, "private must be true or false"),
        ({"discussionsDisabled": True, "x": 1}, "settings hubemu does not know: "
                                                "discussionsDisabled, x"),
        ({}, "the body must be a JSON object of settings to change"),
    ]:
        r = httpx.put(url, json=body, headers=AUTH)
        assert (r.status_code, r.json()) == (400, {"error": message})
    with pytest.raises(errors.RepositoryNotFoundError):
        api.update_repo_settings("acme/none", private=True)

    _upload(api, "a.json", b"{}", "add a")
    api.delete_repo(REPO_ID)
    with pytest.raises(errors.RepositoryNotFoundError):
        api.model_info(REPO_ID)
    with pytest.raises(errors.RepositoryNotFoundError):
        api.delete_repo(REPO_ID)
    api.delete_repo(REPO_ID, missing_ok=True)
    with pytest.raises(errors.HfHubHTTPError) as err:
        hub_api(hub, OTHER_TOKEN).delete_repo("solo")
    assert err.value.response.status_code == 401
    assert api.repo_exists("hubemu-user/solo")
    # Created again, the repo starts afresh.
    api.create_repo(REPO_ID)
    assert [c.title for c in api.list_repo_commits(REPO_ID)] == ["initial commit"]
    assert api.list_repo_files(REPO_ID) == [".gitattributes"]


def test_refs_survive_a_restart_and_old_stores_load(tmp_path: Path):
    with HubEmulator(tmp_path / "hub") as first:
        api = hub_api(first)
        api.create_repo(REPO_ID, repo_type="dataset")
        api.create_branch(REPO_ID, branch="dev", repo_type="dataset")
        c1 = api.upload_file(path_or_fileobj=b"{}", path_in_repo="a.json", repo_id=REPO_ID,
                             repo_type="dataset", revision="dev").oid
        api.create_tag(REPO_ID, tag="v1", revision="dev", repo_type="dataset")
        api.update_repo_settings(REPO_ID, gated="auto", repo_type="dataset")
        before = api.list_repo_refs(REPO_ID, repo_type="dataset")
    with HubEmulator(tmp_path / "hub") as second:
        api = hub_api(second)
        assert api.list_repo_refs(REPO_ID, repo_type="dataset") == before
        assert api.list_repo_commits(REPO_ID, repo_type="dataset", revision="v1")[0].commit_id == c1
        assert api.dataset_info(REPO_ID).gated == "auto"

    # A store written before branches existed: one line of commits, main at the last one.
    stored = tmp_path / "hub" / "repos" / "datasets" / f"{REPO_ID}.json"
    data = json.loads(stored.read_text())
    old = {k: data[k] for k in ("repo_type", "repo_id", "private")}
    old["commits"] = [{k: c[k] for k in ("oid", "parent", "summary", "ts", "files")}
                      for c in data["commits"] if c["oid"] != c1]
    stored.write_text(json.dumps(old))
    with HubEmulator(tmp_path / "hub") as third:
        api = hub_api(third)
        refs = api.list_repo_refs(REPO_ID, repo_type="dataset")
        assert [(b.name, b.target_commit) for b in refs.branches] == [
            ("main", old["commits"][-1]["oid"])]
        assert refs.tags == []
