"""Plugin for the HF tests: the environment huggingface_hub needs against the local Hub emulator
(set here, before anything imports huggingface_hub: this plugin loads first), the `hub` fixture and
a canary token that must never leak.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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
def hub(tmp_path: Path) -> Iterator[HubEmulator]:
    """An emulator that accepts only the canary token for writes and private repos, with small
    tree pages so listings paginate."""
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
