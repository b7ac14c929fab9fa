"""The GPU check's code path on CPU, and its error without CUDA."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from appliance.training import gpu_check
from tests.utils.datasets import make_dataset


@pytest.fixture(autouse=True)
def no_gpu_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's GPUs do not count: CUDA is not visible and nvidia-smi is not found."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "shutil", SimpleNamespace(which=lambda name: None))


def test_gpu_check_code_path_on_cpu(tmp_path: Path, capsys):
    ds = make_dataset(tmp_path / "ds", train_games=6, val_games=1)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1",
                           "--batch-size", "3", "--data", str(ds / "train.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["steps"] == 2 and out["batch_games"] == 3
    assert out["train_targets_per_s"] > 0
    assert out["gpu_utilisation"] == {"available": False}
    assert set(out["inference_latency"]) == {"batch1", "batch64"}


def test_gpu_check_without_cuda_says_so(capsys):
    assert gpu_check.main([]) == 2
    assert capsys.readouterr().err.startswith("error: no CUDA GPU is visible")
