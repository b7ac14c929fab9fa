"""Plugin for the HF tests: the environment huggingface_hub needs against the local Hub emulator
(set here, before anything imports huggingface_hub: this plugin loads first), the `hub` fixture and
a canary token that must never leak.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Read by huggingface_hub at import: no Xet (the emulator speaks LFS only), no probe to the real
# Hub, no progress bars in captured output.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

from host_tools.emulators.hubemu import HubEmulator  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CANARY = "hf_CANARY_9f8e7d6c5b4a3f2e1d0c"
OTHER_TOKEN = "hf_other_token_not_accepted_1234"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEmulator]:
    """An emulator that accepts only the canary token for writes and private repos, with small
    tree pages so listings paginate. huggingface_hub's constants are pinned too, in case it was
    imported before this plugin set its environment."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    emu = HubEmulator(tmp_path / "hub", tree_page_size=4, tokens=frozenset({CANARY})).start()
    try:
        yield emu
    finally:
        emu.stop()


def hf_env(hub: HubEmulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess talking to `hub` with the canary token."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "TRAIN_", "HUGGING")) and k != "VAL_PATH"}
    env = {
        **keep,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_TOKEN": CANARY,
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "REPO_DIR": str(tmp_path / "repo"),
        "PYTHONPATH": str(REPO),
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text, "the HF token leaked into output"


def assert_canary_never_in_urls(hub: HubEmulator) -> None:
    paths = [r.path for r in hub.requests()]
    assert paths, "the test made no request"
    assert not any(CANARY in p for p in paths)


def hub_api(hub: HubEmulator, token: str | None = CANARY) -> Any:
    """The official client against `hub`, with `token` (None: anonymous)."""
    import huggingface_hub as hh

    return hh.HfApi(endpoint=hub.url, token=token or False)


def set_cli_env(hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                **extra: str) -> dict[str, str]:
    """In-process CLI runs: the environment a subprocess would get (`hf_env`), and fast client
    retries with no keyring."""
    import appliance.hf

    values = hf_env(hub, tmp_path, **extra)
    for key in [k for k in list(os.environ) if k.startswith(("HF_", "TRAIN_"))]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(appliance.hf, "DEFAULT_BACKOFF_S", 0.01)
    monkeypatch.setattr(appliance.hf, "keyring_token", lambda: None)
    return values


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path
                     ) -> tuple[int, str, str]:
    """`python -m host_tools.datasets ARGS` in this process: exit code, stdout, stderr; the
    canary token must be in neither."""
    from host_tools import datasets

    rc = datasets.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert_no_canary(out, err)
    return rc, out, err
