"""The Hub emulator against the real huggingface_hub client: every call our flows make, the
headers and error codes the client depends on, persistence, auth and injected faults."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import httpx
import pytest
from huggingface_hub import errors

from host_tools.emulators.hubemu import HubEmulator
from tests.utils.hubemu import CANARY, OTHER_TOKEN, hub_api

REPO_ID = "acme/artifacts"


def _paths(hub: HubEmulator) -> list[str]:
    return [f"{r.method} {r.path.split('?')[0]}" for r in hub.requests()]


def test_repo_upload_list_download(hub: HubEmulator, tmp_path: Path):
    api = hub_api(hub)
    url = api.create_repo(REPO_ID, repo_type="dataset", private=True)
    assert url == f"{hub.url}/datasets/{REPO_ID}"
    assert api.create_repo(REPO_ID, repo_type="dataset", exist_ok=True) == url
    with pytest.raises(errors.HfHubHTTPError, match="409"):
        api.create_repo(REPO_ID, repo_type="dataset")

    blob = os.urandom(5000)
    api.upload_file(path_or_fileobj=b'{"loss": 0.1}', path_in_repo="runs/r1/metrics.json",
                    repo_id=REPO_ID, repo_type="dataset")
    api.upload_file(path_or_fileobj=io.BytesIO(blob), path_in_repo="runs/r1/model.pt",
                    repo_id=REPO_ID, repo_type="dataset")
    for version in ("v1", "v2"):
        folder = tmp_path / version
        folder.mkdir()
        (folder / "data.tar.gz").write_bytes(os.urandom(300))
        (folder / "manifest.json").write_text(f'{{"version": "{version}"}}')
        api.upload_folder(folder_path=folder, path_in_repo=f"validated_datasets/ds1/{version}",
                          repo_id=REPO_ID, repo_type="dataset")
    methods = _paths(hub)
    # .pt and .tar.gz go through LFS (batch, PUT, verify); JSON is committed inline.
    assert methods.count(f"POST /datasets/{REPO_ID}.git/info/lfs/objects/batch") == 3
    assert sum(m.startswith("PUT /_lfs/upload/") for m in methods) == 3

    tree = api.list_repo_tree(REPO_ID, path_in_repo="validated_datasets/ds1",
                              repo_type="dataset")
    assert [(type(e).__name__, e.path) for e in tree] == [
        ("RepoFolder", "validated_datasets/ds1/v1"), ("RepoFolder", "validated_datasets/ds1/v2")]
    hub.clear_requests()
    files = api.list_repo_files(REPO_ID, repo_type="dataset")
    assert files == [".gitattributes", "runs/r1/metrics.json", "runs/r1/model.pt",
                     "validated_datasets/ds1/v1/data.tar.gz",
                     "validated_datasets/ds1/v1/manifest.json",
                     "validated_datasets/ds1/v2/data.tar.gz",
                     "validated_datasets/ds1/v2/manifest.json"]
    assert sum("cursor=" in r.path for r in hub.requests()) >= 2  # Link pagination was followed
    entry = next(e for e in api.list_repo_tree(REPO_ID, path_in_repo="runs/r1",
                                               repo_type="dataset") if e.path.endswith(".pt"))
    assert entry.lfs is not None and entry.size == 5000

    assert api.file_exists(REPO_ID, "runs/r1/model.pt", repo_type="dataset")
    assert not api.file_exists(REPO_ID, "runs/r1/nope.pt", repo_type="dataset")
    assert api.repo_exists(REPO_ID, repo_type="dataset")
    assert not api.repo_exists("acme/nope", repo_type="dataset")
    with pytest.raises(errors.RemoteEntryNotFoundError):
        api.list_repo_tree(REPO_ID, path_in_repo="validated_datasets/ds9", repo_type="dataset"
                           ).__iter__().__next__()

    got = api.hf_hub_download(REPO_ID, "runs/r1/model.pt", repo_type="dataset",
                              local_dir=tmp_path / "dl")
    assert Path(got).read_bytes() == blob
    cached = api.hf_hub_download(REPO_ID, "runs/r1/model.pt", repo_type="dataset",
                                 cache_dir=tmp_path / "cache")
    assert Path(cached).read_bytes() == blob
    snap = Path(api.snapshot_download(REPO_ID, repo_type="dataset", cache_dir=tmp_path / "snap",
                                      allow_patterns=["validated_datasets/ds1/v2/*"]))
    assert sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()) == [
        "validated_datasets/ds1/v2/data.tar.gz", "validated_datasets/ds1/v2/manifest.json"]
    with pytest.raises(errors.RemoteEntryNotFoundError):
        api.hf_hub_download(REPO_ID, "missing.txt", repo_type="dataset",
                            local_dir=tmp_path / "dl")

    head = api.repo_info(REPO_ID, repo_type="dataset").sha
    hub.clear_requests()
    api.upload_file(path_or_fileobj=b'{"loss": 0.1}', path_in_repo="runs/r1/metrics.json",
                    repo_id=REPO_ID, repo_type="dataset")
    # Unchanged content: preupload reports the same oid and the client sends no commit.
    assert not any("/commit/" in m for m in _paths(hub))
    assert api.repo_info(REPO_ID, repo_type="dataset").sha == head


def test_resolve_headers_ranges_and_error_codes(hub: HubEmulator):
    api = hub_api(hub)
    api.create_repo(REPO_ID)
    blob = bytes(range(256)) * 40
    api.upload_file(path_or_fileobj=io.BytesIO(blob), path_in_repo="m.pt", repo_id=REPO_ID)
    head = api.repo_info(REPO_ID).sha
    auth = {"Authorization": f"Bearer {CANARY}"}
    url = f"{hub.url}/{REPO_ID}/resolve/main/m.pt"
    r = httpx.head(url, headers=auth)
    assert r.status_code == 200
    assert r.headers["X-Repo-Commit"] == head
    assert r.headers["X-Linked-Size"] == str(len(blob))
    assert r.headers["Content-Length"] == str(len(blob))
    assert "X-Xet-Hash" not in r.headers
    r = httpx.get(url, headers={**auth, "Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (206, blob[10:20])
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(blob)}"
    r = httpx.get(url, headers={**auth, "Range": f"bytes=10000-{len(blob) + 500}"})
    assert (r.status_code, r.content) == (206, blob[10000:])
    r = httpx.head(f"{hub.url}/{REPO_ID}/resolve/main/nope.bin", headers=auth)
    assert (r.status_code, r.headers["X-Error-Code"]) == (404, "EntryNotFound")
    r = httpx.get(f"{hub.url}/api/models/acme/none", headers=auth)
    assert (r.status_code, r.headers["X-Error-Code"]) == (404, "RepoNotFound")
    r = httpx.get(f"{hub.url}/api/models/{REPO_ID}/revision/{'0' * 40}", headers=auth)
    assert (r.status_code, r.headers["X-Error-Code"]) == (404, "RevisionNotFound")


def test_state_survives_a_restart(tmp_path: Path):
    with HubEmulator(tmp_path / "hub") as first:
        api = hub_api(first)
        api.create_repo(REPO_ID, repo_type="dataset")
        api.upload_file(path_or_fileobj=io.BytesIO(b"\0weights"), path_in_repo="a/m.pt",
                        repo_id=REPO_ID, repo_type="dataset")
        head = api.repo_info(REPO_ID, repo_type="dataset").sha
    with HubEmulator(tmp_path / "hub") as second:
        api = hub_api(second)
        assert api.repo_info(REPO_ID, repo_type="dataset").sha == head
        got = api.hf_hub_download(REPO_ID, "a/m.pt", repo_type="dataset",
                                  local_dir=tmp_path / "dl")
        assert Path(got).read_bytes() == b"\0weights"


def test_tokens_are_checked(hub: HubEmulator, tmp_path: Path):
    with pytest.raises(errors.HfHubHTTPError) as err:
        hub_api(hub, OTHER_TOKEN).create_repo(REPO_ID)
    assert err.value.response.status_code == 401
    hub_api(hub).create_repo(REPO_ID, private=True)
    with pytest.raises(errors.RepositoryNotFoundError):
        hub_api(hub, None).repo_info(REPO_ID)
    with pytest.raises(errors.HfHubHTTPError) as err:
        hub_api(hub, OTHER_TOKEN).upload_file(path_or_fileobj=b"x", path_in_repo="x.json",
                                           repo_id=REPO_ID)
    assert err.value.response.status_code in (401, 404)
    assert hub_api(hub).repo_info(REPO_ID).private is True


def test_injected_faults(hub: HubEmulator, tmp_path: Path):
    api = hub_api(hub)
    api.create_repo(REPO_ID)
    hub.add_fault("/preupload/", status=429, retry_after=0)
    hub.add_fault("/_lfs/upload/", method="PUT", action="drop")
    data = tmp_path / "m.pt"
    data.write_bytes(os.urandom(200_000))
    info = api.upload_file(path_or_fileobj=data, path_in_repo="m.pt", repo_id=REPO_ID)
    records = hub.requests()
    pre = [r.status for r in records if "/preupload/" in r.path]
    puts = [(r.status, r.body_bytes) for r in records if r.method == "PUT"]
    assert pre == [429, 200]  # the client honoured Retry-After and tried again
    assert puts == [(0, 100_000), (200, 200_000)]  # cut mid-body, then re-sent whole
    assert api.repo_info(REPO_ID).sha == info.oid

    # A 5xx on the commit itself is not retried by huggingface_hub: nothing is committed.
    hub.add_fault("/commit/", status=503)
    with pytest.raises(errors.HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="x.json", repo_id=REPO_ID)
    assert err.value.response.status_code == 503
    assert api.repo_info(REPO_ID).sha == info.oid
    assert not api.file_exists(REPO_ID, "x.json")

    # Faults can be set over HTTP too, as a separately started emulator needs.
    r = httpx.post(f"{hub.url}/_emu/faults", json={"path": "/api/models/", "status": 500,
                                                   "method": "GET"})
    assert r.status_code == 200
    assert httpx.get(f"{hub.url}/api/models/{REPO_ID}").status_code == 500
    assert httpx.get(f"{hub.url}/api/models/{REPO_ID}").status_code == 200
    bad = httpx.post(f"{hub.url}/_emu/faults", json={"nope": 1})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("bad fault: ")


def test_lfs_content_must_match_its_oid(hub: HubEmulator):
    hub_api(hub).create_repo(REPO_ID)
    oid = "ab" * 32
    r = httpx.put(f"{hub.url}/_lfs/upload/{oid}", content=b"not that content")
    assert r.status_code == 400
    assert r.json()["error"] == (
        f"sha256 of the uploaded content is {hashlib.sha256(b'not that content').hexdigest()}, "
        f"not the announced oid {oid}")
    body = (b'{"key":"header","value":{"summary":"s"}}\n'
            b'{"key":"lfsFile","value":{"path":"m.pt","algo":"sha256","oid":"' + oid.encode()
            + b'","size":3}}\n')
    r = httpx.post(f"{hub.url}/api/models/{REPO_ID}/commit/main", content=body,
                   headers={"Authorization": f"Bearer {CANARY}"})
    assert (r.status_code, r.json()["error"]) == (
        422, f"LFS object {oid} of 'm.pt' was never uploaded")
    sneaky = body.replace(oid.encode(), b"../../../../etc/passwd")
    r = httpx.post(f"{hub.url}/api/models/{REPO_ID}/commit/main", content=sneaky,
                   headers={"Authorization": f"Bearer {CANARY}"})
    assert (r.status_code, r.json()["error"]) == (
        400, "LFS oid of 'm.pt' is not a sha256 hex digest")


def test_a_request_is_in_the_log_as_soon_as_its_answer_is(hub: HubEmulator):
    """The log is written before the answer goes out: a client reading it right after each
    answer always finds that request (written after, the last one was missing now and then)."""
    hub.clear_requests()
    with httpx.Client(base_url=hub.url) as client:
        for n in range(1, 201):
            status = client.get("/api/datasets/acme/missing").status_code
            assert (status, len(hub.requests())) == (404, n)
    assert {r.status for r in hub.requests()} == {404}
