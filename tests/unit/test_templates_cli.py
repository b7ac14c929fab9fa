"""provision.py's template-create/-update/-show and registry-auth against localpod in records-only
mode: the exact request bodies (checked against RunPod's document), secret references instead
of secret values (a canary secret that never leaves the workstation), the secrets to create,
localpod resolving a pod's secret references from its own secrets, and registry passwords that
never show in argv, records, answers or output.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.runpod import RunpodClient
from host_tools.emulators.localpod import Account, LocalPodServer, RecordsBackend
from host_tools.emulators.localpod.__main__ import read_secrets
from host_tools.emulators.localpod.containers import ContainerBackend
from host_tools.emulators.localpod.pods import PodRecord
from host_tools.provision import main
from tests.unit.test_runpod_client_conformance import Recording, check_request
from tests.utils.localpod import CANARY, CliEnv, make_cli_env

pytestmark = pytest.mark.timeout(60)

SECRET = "hf_CANARY_SECRET_9d8c7b6a5f4e"
PASSWORD = "pw_CANARY_REGISTRY_1a2b3c4d"
PORTS = ["22/tcp", "8888/http", "8000/http"]
API_REF = "{{ RUNPOD_SECRET_INFERENCE_API_TOKEN }}"
REFUSED = " (HTTP 400); fix the request; retrying it unchanged will fail the same way\n"
HINT = ("RunPod console > Secrets > Create Secret (the name as listed, the value yours); in "
        "localpod: POST /_localpod/secrets {\"name\", \"value\"}")


class Capturing(RecordsBackend):
    """Records backend keeping the env each pod's container would get."""

    def __init__(self) -> None:
        super().__init__()
        self.envs: dict[str, dict[str, str]] = {}
        self.logins: dict[str, tuple[str, str] | None] = {}

    def start(self, pod: PodRecord, env: dict[str, str],
              login: tuple[str, str] | None = None) -> None:
        super().start(pod, env, login)
        self.envs[pod.id] = env
        self.logins[pod.id] = login


@pytest.fixture
def backend() -> Capturing:
    return Capturing()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, backend: Capturing) -> Any:
    with LocalPodServer(Account(backend, {CANARY}, boot_polls=0)) as running:
        monkeypatch.setenv("RUNPOD_API_KEY", CANARY)
        monkeypatch.setenv("RUNPOD_REST_URL", running.rest_url)
        monkeypatch.setenv("RUNPOD_GRAPHQL_URL", running.graphql_url)
        yield running


SENT: list[httpx.Request] = []


def run(args: list[str], stdin: str = "", **kw: Any) -> tuple[int, CliEnv]:
    cli = make_cli_env(**kw)
    recording = Recording()
    cli.env.client_factory = lambda: RunpodClient(transport=recording,
                                                  keyring_lookup=lambda: None)
    old, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        code = main(args, cli.env)
    finally:
        sys.stdin = old
    SENT[:] = recording.sent
    for request in recording.sent:
        check_request(request)  # every request is documented and valid
    return code, cli


def bodies(method: str, path: str) -> list[Any]:
    return [json.loads(r.content) for r in SENT if r.method == method and r.url.path == path]


def assert_nowhere(value: str, cli: CliEnv, server: LocalPodServer, sent: bool = True) -> None:
    """Not in output, any URL (nor, with `sent`, any body) the CLI sent, localpod's records or
    its answers."""
    assert value not in cli.out and value not in cli.err
    assert all(value not in (r.content.decode() if sent else "") + str(r.url) for r in SENT)
    assert value not in json.dumps(server.account.requests)
    assert value not in json.dumps(server.account.templates)
    with httpx.Client(base_url=server.rest_url,
                      headers={"Authorization": f"Bearer {CANARY}"}) as api:
        for path in ("/templates", "/registries", "/pods"):
            assert value not in api.get(path).text


def set_secret(server: LocalPodServer, name: str, value: str, token: str | None = None
               ) -> httpx.Response:
    return httpx.post(f"{server.url}/_localpod/secrets", json={"name": name, "value": value},
                      headers={"Authorization": f"Bearer {token or server.account.control_token}"})


def test_template_create_sends_ports_volume_env_and_secret_references(
        server: LocalPodServer) -> None:
    code, cli = run(["template-create", "chessbot", "--image", "ghcr.io/o/chessbot:1"])
    assert (code, cli.err) == (0, "")
    assert bodies("POST", "/v2/templates") == [{
        "name": "chessbot", "image": "ghcr.io/o/chessbot:1", "ports": PORTS,
        "env": {"START_IDLE_WATCHDOG": "1", "INFERENCE_API_TOKEN": API_REF}, "disk": 30,
        "mounts": {"persistent": {"size": 20, "path": "/workspace"}}, "startSsh": True,
        "startJupyter": False, "category": "NVIDIA"}]
    tid = server.account.templates[-1]["id"]
    assert cli.out == (
        f"created template chessbot (id {tid})\n"
        "  image     ghcr.io/o/chessbot:1\n"
        "  ports     22/tcp,8888/http,8000/http\n"
        "  disk      30 GB container, 20 GB volume on /workspace\n"
        "  registry  -\n"
        f"  env       INFERENCE_API_TOKEN={API_REF}\n"
        "            START_IDLE_WATCHDOG=1\n"
        f"secrets a pod from it needs (create each before the pod starts; {HINT}):\n"
        "  INFERENCE_API_TOKEN  for INFERENCE_API_TOKEN (a value of your choice)\n")


def test_from_env_sends_no_secret_value_and_names_the_secret(server: LocalPodServer,
                                                             tmp_path: Path) -> None:
    env_file = tmp_path / "pod.env"
    env_file.write_text(f"# mine\nHF_TOKEN={SECRET}\nHF_REPO_ID=\"me/chess\"\n\n"
                        "AUTOSTOP_IDLE_MINUTES=15\n", encoding="utf-8")
    code, cli = run(["template-create", "chessbot", "--image", "img:2", "--json",
                     "--from-env", str(env_file), "--env", "AUTOSTOP_IDLE_MINUTES=10",
                     "--disk-gb", "40", "--volume-gb", "50"])
    assert (code, cli.err) == (0, "")
    sent = bodies("POST", "/v2/templates")[0]
    assert sent["env"] == {"START_IDLE_WATCHDOG": "1", "HF_TOKEN": "{{ RUNPOD_SECRET_HF_TOKEN }}",
                           "HF_REPO_ID": "me/chess", "AUTOSTOP_IDLE_MINUTES": "10",
                           "INFERENCE_API_TOKEN": API_REF}
    assert (sent["disk"], sent["mounts"]) == (40, {"persistent": {"size": 50,
                                                                  "path": "/workspace"}})
    assert json.loads(cli.out)["secrets"] == [
        {"name": "HF_TOKEN", "variables": ["HF_TOKEN"], "value_in": str(env_file)},
        {"name": "INFERENCE_API_TOKEN", "variables": ["INFERENCE_API_TOKEN"],
         "value_in": None}]
    assert_nowhere(SECRET, cli, server)
    code, cli = run(["template-show", "chessbot"])
    assert code == 0
    assert cli.out.splitlines()[-2:] == [
        "  HF_TOKEN             for HF_TOKEN (a value of your choice)",
        "  INFERENCE_API_TOKEN  for INFERENCE_API_TOKEN (a value of your choice)"]


def test_bad_input_is_a_clear_usage_error(server: LocalPodServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nnot a pair\n", encoding="utf-8")
    for args, status, message in [
        (["--from-env", str(bad)], 2, f"error: {bad}:2: 'not a pair' is not KEY=VALUE with a "
                                      "variable name of letters, digits and _\n"),
        (["--from-env", str(tmp_path / "none.env")], 2,
         f"error: --from-env {tmp_path / 'none.env'}: No such file or directory\n"),
        (["--volume-gb", "5"], 2, "error: --volume-gb must be at least 10 (RunPod's minimum), "
                                  "not 5\n"),
        (["--env", f"HF_TOKEN={SECRET}"], 2,
         "error: --env HF_TOKEN: a secret's value does not go on the command line; put it in a "
         "--from-env file (it becomes a secret reference) or give --env "
         "'HF_TOKEN={{ RUNPOD_SECRET_HF_TOKEN }}'\n"),
        (["--registry-auth", "nope"], 1, "error: no registry auth has the id or name 'nope'; "
                                         "`provision.py registry-auth list` shows them\n"),
    ]:
        code, cli = run(["template-create", "t", "--image", "img:1", *args])
        assert (code, cli.err) == (status, message)
    assert bodies("POST", "/v2/templates") == []
    code, cli = run(["template-create", "chessbot-appliance", "--image", "img:1"])
    assert (code, cli.err) == (1, "error: create template 'chessbot-appliance': a template "
                                  "named 'chessbot-appliance' exists: names are unique"
                                  + REFUSED)


def test_template_update_merges_env_and_show_reads_it(server: LocalPodServer,
                                                      tmp_path: Path) -> None:
    assert run(["template-create", "chessbot", "--image", "img:1"])[0] == 0
    tid = server.account.templates[-1]["id"]
    env_file = tmp_path / "more.env"
    env_file.write_text(f"JUPYTER_TOKEN='{SECRET}'\n", encoding="utf-8")
    code, cli = run(["template-update", "chessbot", "--image", "img:2", "--rename", "cb2",
                     "--from-env", str(env_file), "--env", "START_HF_SYNC=0",
                     "--volume-gb", "30"])
    assert (code, cli.err) == (0, "")
    assert bodies("PATCH", f"/v2/templates/{tid}") == [{
        "name": "cb2", "image": "img:2",
        "env": {"START_IDLE_WATCHDOG": "1", "INFERENCE_API_TOKEN": API_REF,
                "JUPYTER_TOKEN": "{{ RUNPOD_SECRET_JUPYTER_TOKEN }}", "START_HF_SYNC": "0"},
        "mounts": {"persistent": {"size": 30, "path": "/workspace"}}}]
    assert cli.out.splitlines()[0] == f"updated template cb2 (id {tid})"
    assert cli.out.splitlines()[-2:] == [
        "  INFERENCE_API_TOKEN  for INFERENCE_API_TOKEN (a value of your choice)",
        f"  JUPYTER_TOKEN        for JUPYTER_TOKEN (its value is in {env_file}, which was not "
        "sent)"]
    assert_nowhere(SECRET, cli, server)
    code, cli = run(["template-show", tid, "--json"])
    shown = json.loads(cli.out)
    assert (code, shown["template"]["image"], shown["template"]["volume_gb"]) == (0, "img:2", 30)
    assert [s["name"] for s in shown["secrets"]] == ["INFERENCE_API_TOKEN", "JUPYTER_TOKEN"]
    code, cli = run(["template-update", "cb2"])
    assert (code, cli.err) == (2, "error: nothing to change: give --image, --env, --from-env, "
                                  "--disk-gb, --volume-gb, --registry-auth or --rename\n")
    code, cli = run(["template-show", "nope"])
    assert (code, cli.err) == (1, "error: no template has the id or name 'nope'; "
                                  "`provision.py template-list` shows them\n")


def test_a_pod_from_the_template_gets_the_secret_from_localpod(
        server: LocalPodServer, backend: Capturing) -> None:
    assert run(["template-create", "chessbot", "--image", "img:1"])[0] == 0
    provision = ["provision", "--json", "--template-name", "chessbot", "--gpu-type-id",
                 "NVIDIA A40", "--name", "p1"]
    code, cli = run(provision)
    assert (code, cli.err) == (1, "error: create pod 'p1': secret 'INFERENCE_API_TOKEN' "
                                  "(referenced by env INFERENCE_API_TOKEN) does not exist: "
                                  "create it first"
                                  + REFUSED)
    assert server.account.pods == {}
    assert set_secret(server, "INFERENCE_API_TOKEN", SECRET, token="wrong").status_code == 401
    answer = set_secret(server, "INFERENCE_API_TOKEN", SECRET)
    assert (answer.status_code, answer.json()) == (201, {"name": "INFERENCE_API_TOKEN"})
    code, cli = run(provision)
    assert code == 0, cli.err
    pod = json.loads(cli.out)
    assert backend.envs[pod["id"]]["INFERENCE_API_TOKEN"] == SECRET
    assert backend.envs[pod["id"]]["START_IDLE_WATCHDOG"] == "1"
    assert server.account.pods[pod["id"]].env["INFERENCE_API_TOKEN"] == API_REF
    assert_nowhere(SECRET, cli, server)


def test_registry_auth_add_list_remove_keeps_the_password_secret(
        server: LocalPodServer, monkeypatch: pytest.MonkeyPatch) -> None:
    code, cli = run(["registry-auth", "add", "ghcr", "--username", "me"], stdin=PASSWORD + "\n")
    assert (code, cli.err) == (0, "")
    (rid, stored), = server.account.registries.items()
    assert stored == {"name": "ghcr", "username": "me", "password": PASSWORD}
    assert cli.out == (f"added registry auth ghcr (id {rid}) for user me; use it with "
                       "`template-create --registry-auth ghcr` or `provision --registry-auth "
                       "ghcr`\n")
    assert bodies("POST", "/v2/registries") == [
        {"name": "ghcr", "username": "me", "password": PASSWORD}]
    assert_nowhere(PASSWORD, cli, server, sent=False)
    monkeypatch.setenv("REG_PW", "pw2")
    code, cli = run(["registry-auth", "add", "quay", "--username", "u", "--password-env",
                     "REG_PW", "--json"])
    assert code == 0 and json.loads(cli.out)["name"] == "quay"
    code, cli = run(["registry-auth", "list"])
    ids = {v["name"]: k for k, v in server.account.registries.items()}
    assert cli.out == ("ID          NAME\n" f"{ids['ghcr']}  ghcr\n" f"{ids['quay']}  quay\n")
    assert_nowhere(PASSWORD, cli, server)
    code, cli = run(["registry-auth", "list", "--json"])
    assert json.loads(cli.out) == [{"id": ids["ghcr"], "name": "ghcr"},
                                   {"id": ids["quay"], "name": "quay"}]
    code, cli = run(["registry-auth", "remove", "quay", "--yes"])
    assert (code, cli.out) == (0, f"removed registry auth quay (id {ids['quay']})\n")
    assert list(server.account.registries) == [ids["ghcr"]]
    code, cli = run(["registry-auth", "remove", "quay", "--yes"])
    assert (code, cli.err) == (1, "error: no registry auth has the id or name 'quay'; "
                                  "`provision.py registry-auth list` shows them\n")
    code, cli = run(["registry-auth", "add", "x", "--username", "u"], stdin="")
    assert (code, cli.err) == (2, "error: no password: stdin gave none (pipe it on stdin, or "
                                  "name a variable holding it with --password-env)\n")
    code, cli = run(["registry-auth", "add", "ghcr", "--username", "u"], stdin=PASSWORD)
    assert (code, cli.err) == (1, "error: create registry auth 'ghcr': a registry auth named "
                                  "'ghcr' exists: names are unique"
                                  + REFUSED)
    assert_nowhere(PASSWORD, cli, server, sent=False)


def test_template_and_pod_name_a_registry_auth(server: LocalPodServer,
                                               backend: Capturing) -> None:
    assert run(["registry-auth", "add", "ghcr", "--username", "me"], stdin=PASSWORD)[0] == 0
    rid = next(iter(server.account.registries))
    set_secret(server, "INFERENCE_API_TOKEN", "t")
    code, cli = run(["template-create", "private", "--image", "ghcr.io/me/x:1",
                     "--registry-auth", "ghcr"])
    assert (code, bodies("POST", "/v2/templates")[0]["registry"]) == (0, rid)
    assert "  registry  " + rid in cli.out.splitlines()
    code, cli = run(["provision", "--json", "--template-name", "private", "--gpu-type-id",
                     "NVIDIA A40", "--name", "p"])
    assert code == 0, cli.err
    assert json.loads(cli.out)["id"] in server.account.pods
    pod_id = json.loads(cli.out)["id"]
    assert server.account.pods[pod_id].registry == rid  # from the template
    assert backend.logins[pod_id] == ("me", PASSWORD)  # the image is pulled with the login
    code, cli = run(["provision", "--json", "--image", "ghcr.io/me/y:1", "--gpu-type-id",
                     "NVIDIA A40", "--name", "q", "--registry-auth", rid])
    assert code == 0, cli.err
    assert bodies("POST", "/v2/pods")[0]["registry"] == rid
    with httpx.Client(base_url=server.rest_url,
                      headers={"Authorization": f"Bearer {CANARY}"}) as api:
        assert api.get(f"/pods/{json.loads(cli.out)['id']}").json()["registry"] == rid
        assert api.get(f"/registries/{rid}").json() == {"id": rid, "name": "ghcr"}
        refused = api.post("/templates", json={"name": "n", "image": "i:1", "registry": "zz"})
        assert (refused.status_code, refused.json()["detail"]) == (
            400, "container registry auth 'zz' not found")
        missing = api.post("/registries", json={"name": "n", "username": "u"})
        assert (missing.status_code, missing.json()["detail"]) == (
            422, "Request validation failed: 'password' is required")


def test_localpod_template_validation_follows_the_document(server: LocalPodServer) -> None:
    with httpx.Client(base_url=server.rest_url,
                      headers={"Authorization": f"Bearer {CANARY}"}) as api:
        for body, detail in [
            ({"name": "n"}, "Request validation failed: 'image' is required"),
            ({"name": "", "image": "i:1"},
             "Request validation failed: name: String should have at least 1 character"),
            ({"name": "n", "image": "i:1", "bogus": 1},
             "Request validation failed: unknown field 'bogus'"),
            ({"name": "n", "image": "i:1", "mounts": {"persistent": {"size": 5,
                                                                     "path": "/workspace"}}},
             "Request validation failed: mounts.persistent.size: Input should be greater "
             "than or equal to 10"),
            ({"name": "n", "image": "i:1", "ports": ["22/udp"]},
             "Request validation failed: ports.0: port '22/udp' is not <1..65535>/tcp or "
             "<1..65535>/http"),
        ]:
            answer = api.post("/templates", json=body)
            assert (answer.status_code, answer.json()["detail"]) == (422, detail)
        bad_secret = set_secret(server, "bad name", "v")
        assert bad_secret.status_code == 422


def test_container_backend_pulls_with_the_login_from_a_private_auth_file() -> None:
    seen: list[tuple[list[str], dict[str, Any] | None]] = []

    def engine(argv: Any, env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
        config = None
        if env is not None and "REGISTRY_AUTH_FILE" in env and argv[1] == "pull":
            path = Path(env["REGISTRY_AUTH_FILE"])
            assert Path(env["DOCKER_CONFIG"]) == path.parent
            config = {"mode": oct(path.stat().st_mode & 0o777),
                      "json": json.loads(path.read_text(encoding="utf-8"))}
        seen.append((list(argv), config))
        return subprocess.CompletedProcess(list(argv), 0, "true\n", "")

    backend = ContainerBackend("podman", run=engine)
    acc = Account(backend, {CANARY})
    acc.registries["reg1"] = {"name": "r", "username": "me", "password": PASSWORD}
    pod = acc.create_pod({"name": "c", "image": "127.0.0.1:5000/me/app:1", "gpu_id":
                          "NVIDIA A40", "gpu_count": 1, "cloud": "SECURE", "registry": "reg1"},
                         "account")
    pulls = [(argv, config) for argv, config in seen if argv[1] == "pull"]
    assert pulls == [(["podman", "pull", "--tls-verify=false", "127.0.0.1:5000/me/app:1"],
                      {"mode": "0o600", "json": {"auths": {"127.0.0.1:5000": {
                          "auth": base64.b64encode(f"me:{PASSWORD}".encode()).decode()}}}})]
    assert all(PASSWORD not in " ".join(argv) for argv, _ in seen)
    assert seen.index(pulls[0]) < [argv[1] for argv, _ in seen].index("run")
    assert acc.pods[pod.id].registry == "reg1"
    backend.pull("ghcr.io/me/app:1", ("u", "p"))
    backend.pull("me/app:1", ("u", "p"))
    assert [argv for argv, _ in seen[-2:]] == [["podman", "pull", "ghcr.io/me/app:1"],
                                               ["podman", "pull", "me/app:1"]]
    assert [list(c["json"]["auths"]) for _, c in seen[-2:] if c] == [["ghcr.io"], ["docker.io"]]


def test_localpod_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(f"# for pods\nINFERENCE_API_TOKEN={SECRET}\nhf-token=a=b\n",
                    encoding="utf-8")
    assert read_secrets(path) == {"INFERENCE_API_TOKEN": SECRET, "hf-token": "a=b"}
    path.write_text(f"OK=1\nbad name={SECRET}\n", encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        read_secrets(path)
    assert str(caught.value) == (f"{path}:2: not NAME=VALUE with a secret name of letters, "
                                 "digits, _ or -")
