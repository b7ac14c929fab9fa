"""`make check-cuda-image` without an engine (host_tools.cuda_check: the download argv, the
failure line) and what it checks in the image: the inference API's logged CPU fallback."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch

from appliance.inference.app import resolve_device
from host_tools import cuda_check
from tests.unit.process_fakes import PODMAN, FakeRun

pytestmark = pytest.mark.timeout(60)


@pytest.mark.usefixtures("no_real_processes")
def test_download_is_isolated_and_keeps_pips_ca_bundle(tmp_path: Path, fake_run: FakeRun,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    fake_run.respond = lambda argv: ((0, f"global.cert='{ca}'\nglobal.find-links='/opt'\n", "")
                                     if argv[3:5] == ["config", "list"] else (0, "", ""))
    cuda_check.download(tmp_path / "cache", python="/py")
    assert fake_run.calls[-1] == ["/py", "-m", "pip", "download", "--isolated", "-q",
                                  "--only-binary=:all:", "--cert", str(ca), "-d",
                                  str(tmp_path / "cache"), "torch==2.13.0,!=2.13.0+cpu"]
    assert (tmp_path / "cache").is_dir()
    assert capsys.readouterr().err == ("image: downloading torch==2.13.0,!=2.13.0+cpu (CUDA) and "
                                       f"its dependencies into {tmp_path / 'cache'}\n")
    fake_run.respond = lambda argv: (0, "", "")
    cuda_check.download(tmp_path / "cache", python="/py")
    assert "--cert" not in fake_run.calls[-1]


@pytest.mark.usefixtures("no_real_processes")
def test_main_reports_a_failed_step_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cuda_check, "detect_engine", lambda: PODMAN)

    def fail(cache: Path) -> None:
        raise subprocess.CalledProcessError(1, ["pip", "download"])

    monkeypatch.setattr(cuda_check, "download", fail)
    assert cuda_check.main(["--wheels", str(tmp_path)]) == 1
    assert capsys.readouterr().err == ("check-cuda-image: failed: Command '['pip', 'download']' "
                                       "returned non-zero exit status 1.\n")


def test_wait_names_what_did_not_happen(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 5.0, 11.0])
    monkeypatch.setattr(cuda_check.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(cuda_check.time, "sleep", lambda s: None)
    with pytest.raises(cuda_check.CheckFailed, match=r"^every program RUNNING not within 10 s$"):
        cuda_check.wait(lambda: False, 10, "every program RUNNING")


def test_auto_device_falls_back_to_the_cpu_with_a_log_line(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with caplog.at_level(logging.INFO, logger="appliance.inference"):
        assert resolve_device("auto") == torch.device("cpu")
    assert [r.getMessage() for r in caplog.records] == [
        f"device auto: no usable CUDA GPU (torch {torch.__version__} built for CUDA 13.0): "
        "using the CPU"]
    caplog.clear()
    assert resolve_device("cpu") == torch.device("cpu")
    assert caplog.records == []
    with pytest.raises(RuntimeError, match="^device cuda requested but CUDA is not available$"):
        resolve_device("cuda")
