"""provision.py ssh-config, cp and logs against a real pod runtime (sshd and supervisord on
loopback, found through a records-only localpod whose port 22 maps to it): plain `ssh` through the
written config, scp both ways (rsync where both sides have it), `supervisorctl tail` over SSH; and
AUTOSTOP_MAX_HOURS stopping a real pod with START_IDLE_WATCHDOG=0.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.runpod import RunpodClient
from host_tools.cli import Env
from host_tools.emulators.localpod import Account, LocalPodServer, RecordsBackend
from host_tools.provision import main
from tests.utils import wait_until
from tests.utils.appliance import (
    Appliance,
    base_env,
    ensure_runner,
    make_client_key,
    make_root,
    remove_root,
)

pytestmark = pytest.mark.slow
KEY = "rpk_PODFILES_3c1d2e9f8a7b"


def _boot(root: Path, **extra: str) -> Appliance:
    if os.geteuid() != 0:
        pytest.skip("needs root: sshd and supervisord")
    ensure_runner()
    key = make_client_key(root / "key")
    env = base_env(root, PUBLIC_KEY=key.with_name("key.pub").read_text().strip(),
                   START_JUPYTER="0", START_INFERENCE_API="0", **extra)
    app = Appliance(root, env, key)
    app.start()
    return app


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Appliance, str]]:
    root = make_root("podfiles-")
    app = _boot(root)
    server = LocalPodServer(Account(RecordsBackend({22: int(app.env["SSH_PORT"])}), {KEY},
                                    boot_polls=0))
    server.start()
    try:
        app.wait_running(["sshd"], timeout=120)
        app.trust_host_keys()
        app.wait_login()
        for name, value in (("RUNPOD_API_KEY", KEY), ("RUNPOD_REST_URL", server.rest_url),
                            ("RUNPOD_GRAPHQL_URL", server.graphql_url),
                            ("RUNPOD_SSH_KNOWN_HOSTS_FILE", str(tmp_path / "known_hosts")),
                            ("RUNPOD_SSH_IDENTITY_FILE", str(app.key))):
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("RUNPOD_SSH_HOST_KEY_CHECKING", raising=False)
        code, out = cli(["provision", "--json", "--image", "chessbot:test", "--gpu-type-id",
                         "NVIDIA RTX A4000"])
        assert code == 0, out
        pod_id = str(json.loads(out[:out.rindex("}") + 1])["id"])

        def running() -> bool:
            cli(["status", pod_id])  # reads move the record on
            return server.account.pods[pod_id].status == "RUNNING"

        wait_until(running, 30, 0.1, what="pod RUNNING")
        yield app, pod_id
    finally:
        server.stop()
        app.stop()
        if not os.environ.get("APPLIANCE_KEEP_TEST_ROOT"):
            remove_root(root)


def cli(args: list[str]) -> tuple[int, str]:
    env = Env(out=io.StringIO(), err=io.StringIO(),
              client_factory=lambda: RunpodClient(keyring_lookup=lambda: None))
    code = main(args, env)
    assert isinstance(env.out, io.StringIO) and isinstance(env.err, io.StringIO)
    return code, env.out.getvalue() + env.err.getvalue()


def test_ssh_config_then_plain_ssh(pod: tuple[Appliance, str], tmp_path: Path) -> None:
    app, pod_id = pod
    config = tmp_path / "chessbot.conf"
    code, out = cli(["ssh-config", "--file", str(config)])
    assert code == 0, out
    done = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes",
                           f"chessbot-{pod_id}", "id -un"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (0, "runner\n"), done.stderr
    # The host key was pinned under the pod's alias, as `provision.py ssh` pins it.
    assert (tmp_path / "known_hosts").read_text().startswith(f"runpod-{pod_id} ")


def test_cp_both_ways_and_a_programs_log(pod: tuple[Appliance, str], tmp_path: Path,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    app, pod_id = pod
    src = tmp_path / "up"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha\n")
    (src / "b.bin").write_bytes(bytes(range(256)) * 40)
    home = app.env["APPLIANCE_USER_HOME"]
    code, out = cli(["cp", str(src), f"{pod_id}:{home}/up"])
    assert code == 0, out
    listing = app.ssh(f"cd {home}/up && find . -type f | sort && cat sub/a.txt")
    assert listing.stdout == "./b.bin\n./sub/a.txt\nalpha\n", listing.stderr
    back = tmp_path / "back"
    code, out = cli(["cp", f"{pod_id}:{home}/up", str(back)])
    assert code == 0, out
    assert (back / "b.bin").read_bytes() == (src / "b.bin").read_bytes()
    assert (back / "sub" / "a.txt").read_text() == "alpha\n"
    code, out = cli(["cp", f"{pod_id}:{home}/no-such", str(tmp_path / "x")])
    assert code == 1 and out.endswith(f"copying {pod_id}:{home}/no-such to "
                                      f"{tmp_path / 'x'}; its message is above\n")
    capfd.readouterr()
    code, out = cli(["logs", pod_id, "sshd"])
    assert code == 0, out
    assert "Server listening" in capfd.readouterr().out


def test_max_hours_stops_a_pod_without_the_idle_watchdog(tmp_path: Path) -> None:
    root = make_root("maxhours-")
    app = _boot(root, START_IDLE_WATCHDOG="0", AUTOSTOP_MAX_HOURS="0.002",  # 7.2 s
                AUTOSTOP_ACTION="exit", AUTOSTOP_WARN_MINUTES="0", AUTOSTOP_POLL_SECONDS="0.3")
    try:
        started = time.monotonic()
        app.wait_running(["sshd", "idle-watchdog"], timeout=120)
        assert app.proc is not None
        app.proc.wait(timeout=90)
        assert time.monotonic() - started >= 5
        log = Path(app.env["RUNPOD_PHASE_TIMING_LOG"])
        stops = [r for r in map(json.loads, log.read_text().splitlines())
                 if r["phase"] == "autostop"]
        assert len(stops) == 1 and stops[0]["status"] == "ok"
        assert stops[0]["reason"].startswith("hard cap: running ")
        assert "(AUTOSTOP_MAX_HOURS=0.002), active or not; sync: no artifact upload pending; " \
            "action exit" in stops[0]["reason"]
    finally:
        app.stop()
        if not os.environ.get("APPLIANCE_KEEP_TEST_ROOT"):
            remove_root(root)
