"""The predecessor's variables (appliance/legacy_env.py): its whole template rendered through
`bootstrap --render-only`, the conversions, new names winning, bad old values named as such,
secrets kept out of the lines, and each behaviour honoured through a variable added for it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import legacy_env, settings
from appliance.legacy_env import OldVariable, translate
from appliance.runtime import bootstrap
from appliance.runtime.config import PodConfig
from host_tools.emulators.hubemu.store import HubError

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "predecessor" / "env.example"
POD_VARS = [name for klass in settings.pod_settings_classes() for name in klass.model_fields]
CANARIES = ("canary-jupyter-token-51c2", "canary-hf-token-9e4d", "canary-runpod-key-77ab")
# The issue's list: every one must be declared.
ISSUE_NAMES = {
    "TRAIN_PHASE_WEIGHT_ENDGAME", "START_HF_WATCH", "FORCE_PIP_SYNC", "RUNPOD_PHASE_TIMING_RUN_ID",
    "INFERENCE_API_PORT", "INFERENCE_API_MODEL_PATH", "INFERENCE_API_DEVICE", "INFERENCE_API_HOST",
    "IDLE_TIMEOUT_SECONDS", "IDLE_CHECK_INTERVAL_SECONDS", "IDLE_GPU_UTIL_THRESHOLD",
    "IDLE_ACTIVE_PROCESS_PATTERNS", "ACTIVITY_HEARTBEAT_FILE", "RUNPOD_GRAPHQL_ENDPOINT",
    "HF_SYNC_INTERVAL_SECONDS", "RUNNER_USER", "OUTPUT_PATH", "METRICS_OUT",
    "IDLE_GPU_MEM_MB_THRESHOLD", "INFERENCE_API_TOPK_DEFAULT", "INFERENCE_API_VERBOSE",
    "HF_SYNC_VERBOSE", "IDLE_WATCHDOG_VERBOSE", "HF_REPO_TYPE", "HF_HUB_ENABLE_HF_TRANSFER",
    "RUNPOD_PHASE_TIMING_ENABLED", "VENV_DIR",
}


def predecessor_env() -> dict[str, str]:
    out = {}
    for line in FIXTURE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name] = value
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [*POD_VARS, "APPLIANCE_SECRETS_DIR"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- the declarations ---------------------------------------------------------------------------


def test_every_old_name_is_declared_once_and_reads_as_a_pod_variable():
    names = [v.name for v in legacy_env.OLD_VARIABLES]
    assert len(names) == len(set(names))
    assert set(names) == ISSUE_NAMES
    for v in legacy_env.OLD_VARIABLES:
        assert v.new is None or v.new in POD_VARS, v.name
        assert v.meaning and v.effect
    fixture = set(predecessor_env())  # it holds them all, and nothing else but pod variables
    assert not ISSUE_NAMES - fixture and not fixture - ISSUE_NAMES - set(POD_VARS)


# -- the golden: the predecessor's whole template -----------------------------------------------

EXPECTED_LINES = [
    "START_HF_WATCH=1 read as START_HF_SYNC=1",
    "FORCE_PIP_SYNC=1 read as FORCE_REQUIREMENTS_SYNC=1",
    "RUNPOD_PHASE_TIMING_RUN_ID=legacy-run-42 read as RUN_ID=legacy-run-42",
    "RUNNER_USER=trainer read as APPLIANCE_USER=trainer",
    "INFERENCE_API_HOST=127.0.0.1 read as INFERENCE_HOST=127.0.0.1",
    "INFERENCE_API_PORT=8011 read as INFERENCE_PORT=8011",
    "INFERENCE_API_MODEL_PATH=artifacts/run7/model.pt read as "
    "INFERENCE_MODEL_PATH=/workspace/chessbot-work/artifacts/run7/model.pt",
    "INFERENCE_API_DEVICE=cpu read as INFERENCE_DEVICE=cpu",
    "ACTIVITY_HEARTBEAT_FILE=/workspace/chessbot-work/.activity read as "
    "INFERENCE_HEARTBEAT_FILE=/workspace/chessbot-work/.activity",
    "IDLE_TIMEOUT_SECONDS=1800 read as AUTOSTOP_IDLE_MINUTES=30",
    "IDLE_CHECK_INTERVAL_SECONDS=30 read as AUTOSTOP_POLL_SECONDS=30",
    "IDLE_GPU_UTIL_THRESHOLD=20 read as AUTOSTOP_GPU_UTIL_PERCENT=20",
    "IDLE_ACTIVE_PROCESS_PATTERNS=train_baseline.py,appliance.training read as "
    "AUTOSTOP_PROCESS_PATTERNS=train_baseline.py,appliance.training",
    "RUNPOD_GRAPHQL_ENDPOINT=https://graphql.example.org/graphql read as "
    "RUNPOD_GRAPHQL_URL=https://graphql.example.org/graphql",
    "HF_SYNC_INTERVAL_SECONDS=45 read as HF_SYNC_POLL_SECONDS=45",
    "TRAIN_PHASE_WEIGHT_ENDGAME=3.5 read as TRAIN_ENDGAME_PHASE_WEIGHT=3.5",
    "OUTPUT_PATH=/workspace/chessbot-work/artifacts/run7/model.pt read as "
    "TRAIN_OUTPUT_DIR=/workspace/chessbot-work/artifacts/run7",
    "METRICS_OUT=/workspace/chessbot-work/artifacts/run7/metrics.json read as "
    "TRAIN_OUTPUT_DIR=/workspace/chessbot-work/artifacts/run7",
    "IDLE_GPU_MEM_MB_THRESHOLD=2048 read as AUTOSTOP_GPU_MEM_MB=2048",
    "INFERENCE_API_TOPK_DEFAULT=12 read as INFERENCE_TOPK_DEFAULT=12",
    "INFERENCE_API_VERBOSE=0 read as INFERENCE_LOG_LEVEL=WARNING",
    "HF_SYNC_VERBOSE=0 read as HF_SYNC_LOG_LEVEL=WARNING",
    "IDLE_WATCHDOG_VERBOSE=0 read as AUTOSTOP_LOG_LEVEL=WARNING",
    "HF_REPO_TYPE=dataset kept: artifact sync uploads to a repo of this type (model or dataset)",
    "VENV_DIR=/opt/venvs/other has no effect: the services and pip use APPLIANCE_PYTHON (the "
    "image sets it to its venv's python)",
    "HF_HUB_ENABLE_HF_TRANSFER=0 has no effect: huggingface_hub 1.0 and later no longer use "
    "hf_transfer (large files go through hf_xet)",
    "RUNPOD_PHASE_TIMING_ENABLED=0 has no effect: the phase log is always written (status and "
    "the watchdog's stop records read it); RUNPOD_PHASE_TIMING_LOG moves it",
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("render") / "out"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(out.parent),
           "APPLIANCE_PYTHON": sys.executable, **predecessor_env()}
    proc = subprocess.run([sys.executable, "-m", "appliance.runtime.bootstrap", "--render-only",
                           str(out)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    return out, proc


def test_the_predecessor_template_renders_with_each_variable_in_effect(rendered):
    out, proc = rendered
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"appliance-bootstrap: {line}" for line in EXPECTED_LINES]
    assert sorted(p.name for p in (out / "conf.d").iterdir()) == [
        "00-fatal-reviver.conf", "10-sshd.conf", "20-inference.conf", "30-jupyter.conf",
        "40-hf-sync.conf", "50-idle-watchdog.conf"]  # START_HF_WATCH=1 runs hf-sync
    py = sys.executable
    conf = {p.name: p.read_text() for p in (out / "conf.d").iterdir()}
    inference = conf["20-inference.conf"].splitlines()
    assert (f"command={py} -m appliance.inference --host 127.0.0.1 --port 8011 --model "
            "/workspace/chessbot-work/artifacts/run7/model.pt --device cpu") in inference
    assert "user=trainer" in inference and "directory=/home/trainer" in inference
    assert ('environment=HOME="/home/trainer",USER="trainer",LOGNAME="trainer",SHELL="/bin/bash",'
            'INFERENCE_HEARTBEAT_FILE="/workspace/chessbot-work/.activity"') in inference
    assert ("command=" + py + " -m jupyterlab --no-browser --ServerApp.ip=0.0.0.0 "
            "--ServerApp.port=8899 --ServerApp.port_retries=0 --ServerApp.root_dir=/workspace"
            ) in conf["30-jupyter.conf"].splitlines()
    assert "user=trainer" in conf["40-hf-sync.conf"].splitlines()
    assert ('environment=INFERENCE_HEARTBEAT_FILE="/workspace/chessbot-work/.activity"'
            in conf["50-idle-watchdog.conf"].splitlines())
    assert "AllowUsers trainer" in (out / "sshd_config").read_text()
    shell = (out / "appliance-env.sh").read_text().splitlines()
    for line in ("APPLIANCE_USER=trainer", "AUTOSTOP_GPU_MEM_MB=2048",
                 "AUTOSTOP_GPU_UTIL_PERCENT=20", "AUTOSTOP_IDLE_MINUTES=30",
                 "AUTOSTOP_LOG_LEVEL=WARNING", "AUTOSTOP_POLL_SECONDS=30",
                 "AUTOSTOP_PROCESS_PATTERNS=train_baseline.py,appliance.training",
                 "FORCE_REQUIREMENTS_SYNC=1", "HF_REPO_TYPE=dataset", "HF_SYNC_LOG_LEVEL=WARNING",
                 "HF_SYNC_POLL_SECONDS=45", "INFERENCE_DEVICE=cpu",
                 "INFERENCE_HEARTBEAT_FILE=/workspace/chessbot-work/.activity",
                 "INFERENCE_HOST=127.0.0.1", "INFERENCE_LOG_LEVEL=WARNING",
                 "INFERENCE_MODEL_PATH=/workspace/chessbot-work/artifacts/run7/model.pt",
                 "INFERENCE_PORT=8011", "INFERENCE_TOPK_DEFAULT=12",
                 "RUNPOD_GRAPHQL_URL=https://graphql.example.org/graphql",
                 "RUN_ID=legacy-run-42", "START_HF_SYNC=1", "TRAIN_ENDGAME_PHASE_WEIGHT=3.5",
                 "TRAIN_OUTPUT_DIR=/workspace/chessbot-work/artifacts/run7", "REPO_REF=release",
                 "HF_SYNC_PATTERNS='*.pt'", "TRAIN_EXTRA_ARGS='--seed 7'"):
        assert f"export {line}" in shell, line
    for name in ("VENV_DIR", "IDLE_TIMEOUT_SECONDS", "HF_HUB_ENABLE_HF_TRANSFER", "OUTPUT_PATH",
                 "HF_SYNC_VERBOSE", "RUNNER_USER"):  # old names reach shells as the new ones
        assert not any(line.startswith(f"export {name}=") for line in shell)
    texts = [proc.stdout, proc.stderr] + [p.read_text() for p in out.rglob("*") if p.is_file()]
    for canary in CANARIES:
        assert not any(canary in text for text in texts)


def test_the_predecessor_template_loads_as_these_settings(clean_env):
    for name, value in predecessor_env().items():
        clean_env.setenv(name, value)
    s = settings
    wd = s.load(s.WatchdogSettings)
    assert (wd.AUTOSTOP_IDLE_MINUTES, wd.AUTOSTOP_POLL_SECONDS, wd.AUTOSTOP_GPU_UTIL_PERCENT,
            wd.AUTOSTOP_GPU_MEM_MB, wd.AUTOSTOP_PROCESS_PATTERNS, wd.AUTOSTOP_LOG_LEVEL,
            wd.AUTOSTOP_ACTION) == (30.0, 30.0, 20.0, 2048.0,
                                    "train_baseline.py,appliance.training", "WARNING", "none")
    inf = s.load(s.InferenceSettings)
    got = (inf.INFERENCE_HOST, inf.INFERENCE_PORT, inf.INFERENCE_MODEL_PATH, inf.INFERENCE_DEVICE,
           inf.INFERENCE_TOPK_DEFAULT, inf.INFERENCE_LOG_LEVEL, inf.INFERENCE_HEARTBEAT_FILE)
    assert got == (
        "127.0.0.1", 8011, Path("/workspace/chessbot-work/artifacts/run7/model.pt"), "cpu", 12,
        "WARNING", Path("/workspace/chessbot-work/.activity"))
    hf = s.load(s.HfSettings)
    assert (hf.HF_REPO_ID, hf.HF_REPO_TYPE, hf.HF_SYNC_POLL_SECONDS, hf.HF_SYNC_LOG_LEVEL,
            hf.sync_patterns, hf.HF_SYNC_SOURCE_DIR, hf.HF_DATASET_REPO_ID,
            hf.HF_DATASET_PATH_PREFIX, hf.HF_DATASET_CACHE_DIR, hf.HF_DATASET_FETCH_MANIFEST,
            hf.HF_FETCH_LATEST_ALL_DATASETS, hf.token) == (
        "team/chess-models", "dataset", 45.0, "WARNING", ["*.pt"],
        Path("/workspace/chessbot-work/artifacts/run7"), "team/chess-datasets", "published",
        Path("/workspace/cache/datasets"), Path("/workspace/cache/fetch_manifest.json"), True,
        "canary-hf-token-9e4d")
    train = s.load(s.TrainingSettings)
    got = (train.TRAIN_OUTPUT_DIR, train.TRAIN_ENDGAME_PHASE_WEIGHT, train.TRAIN_BATCH_SIZE,
           train.TRAIN_NUM_WORKERS, train.TRAIN_DATASET_DIR, train.TRAIN_PATH,
           train.TRAIN_EXTRA_ARGS)
    assert got == (
        Path("/workspace/chessbot-work/artifacts/run7"), 3.5, 512, 2,
        Path("/workspace/chessbot-work/data/dataset/elite"), None, "--seed 7")
    cfg = PodConfig.load()
    assert (cfg.services.START_HF_SYNC, cfg.services.START_IDLE_WATCHDOG,
            cfg.repo.FORCE_REQUIREMENTS_SYNC, cfg.repo.SYNC_REQUIREMENTS_ON_START,
            cfg.repo.CLONE_REPO_ON_START, cfg.repo.GIT_AUTO_PULL, cfg.repo.REPO_REF,
            cfg.runtime.APPLIANCE_USER, cfg.paths.RUN_ID, cfg.paths.REPO_DIR,
            cfg.paths.timing_log, cfg.jupyter.JUPYTER_PORT) == (
        True, True, True, False, False, False, "release", "trainer", "legacy-run-42",
        Path("/workspace/chessbot-work"),
        Path("/workspace/chessbot-work/artifacts/timings/phases.jsonl"), 8899)
    rp = s.load(s.RunpodSettings)
    assert (rp.RUNPOD_GRAPHQL_URL, rp.RUNPOD_POD_ID) == ("https://graphql.example.org/graphql",
                                                         "pod-legacy-1")
    python = s.load(s.RuntimeSettings).APPLIANCE_PYTHON
    assert python == Path(sys.executable)  # VENV_DIR has no effect


# -- conversions --------------------------------------------------------------------------------


@pytest.mark.parametrize("old,value,new,read", [
    ("IDLE_TIMEOUT_SECONDS", "3600", "AUTOSTOP_IDLE_MINUTES", "60"),
    ("IDLE_TIMEOUT_SECONDS", "90", "AUTOSTOP_IDLE_MINUTES", "1.5"),
    ("IDLE_TIMEOUT_SECONDS", " 6 ", "AUTOSTOP_IDLE_MINUTES", "0.1"),
    ("INFERENCE_API_VERBOSE", "1", "INFERENCE_LOG_LEVEL", "INFO"),
    ("HF_SYNC_VERBOSE", "true", "HF_SYNC_LOG_LEVEL", "INFO"),
    ("IDLE_WATCHDOG_VERBOSE", "off", "AUTOSTOP_LOG_LEVEL", "WARNING"),
    ("INFERENCE_API_MODEL_PATH", "/m/best.pt", "INFERENCE_MODEL_PATH", "/m/best.pt"),
    ("INFERENCE_API_MODEL_PATH", "runs/best.pt", "INFERENCE_MODEL_PATH", "/repo/runs/best.pt"),
    ("INFERENCE_API_MODEL_PATH", "latest", "INFERENCE_MODEL_PATH", None),
    ("OUTPUT_PATH", "/out/run1/m.pt", "TRAIN_OUTPUT_DIR", "/out/run1"),
    ("METRICS_OUT", "m.json", "TRAIN_OUTPUT_DIR", "."),
    ("RUNNER_USER", "ops", "APPLIANCE_USER", "ops"),
])
def test_conversions(old, value, new, read):
    [o] = translate({old: value}, "/repo")
    assert (o.status, o.old.new, o.value) == ("read", new, read)
    shown_value = " unset (its default)" if read is None else f"={read}"
    assert o.line() == f"{old}={value} read as {new}{shown_value}"


def test_unset_or_empty_old_names_say_nothing():
    assert translate({"IDLE_TIMEOUT_SECONDS": "", "PATH": "/bin"}, "/repo") == []


@pytest.mark.parametrize("old,value,message", [
    ("IDLE_TIMEOUT_SECONDS", "soon", "bad environment: IDLE_TIMEOUT_SECONDS='soon': expected a "
     "number of seconds (read as AUTOSTOP_IDLE_MINUTES)"),
    ("IDLE_WATCHDOG_VERBOSE", "loud", "bad environment: IDLE_WATCHDOG_VERBOSE='loud': expected 1 "
     "or 0 (read as AUTOSTOP_LOG_LEVEL)"),
    ("IDLE_TIMEOUT_SECONDS", "-60", "bad environment: IDLE_TIMEOUT_SECONDS='-60' (read as "
     "AUTOSTOP_IDLE_MINUTES=-1): Input should be greater than 0 (Stop the pod after this many "
     "idle minutes (fractions allowed: 0.1 = 6 s).)"),
    ("IDLE_GPU_UTIL_THRESHOLD", "150", "bad environment: IDLE_GPU_UTIL_THRESHOLD='150' (read as "
     "AUTOSTOP_GPU_UTIL_PERCENT=150): Input should be less than or equal to 100 (GPU utilisation "
     "above this counts as activity.)"),
])
def test_a_bad_old_value_is_named_by_the_old_variable(clean_env, old, value, message):
    clean_env.setenv(old, value)
    with pytest.raises(settings.SettingsError) as err:
        settings.load(settings.WatchdogSettings)
    assert str(err.value) == message
    settings.load(settings.InferenceSettings)  # a class that does not read it is not stopped


def test_the_bootstrap_stops_on_a_bad_old_value_naming_it(clean_env, capsys):
    clean_env.setenv("INFERENCE_API_PORT", "eighty")
    assert bootstrap.main(["--no-exec"]) == 2
    assert capsys.readouterr().err == (
        "appliance-bootstrap: error: bad environment: INFERENCE_API_PORT='eighty' (read as "
        "INFERENCE_PORT=eighty): Input should be a valid integer, unable to parse string as an "
        "integer (Inference API port.)\n")


# -- the new name wins --------------------------------------------------------------------------


def test_a_new_name_that_is_set_wins_and_the_line_says_so(clean_env):
    clean_env.setenv("IDLE_TIMEOUT_SECONDS", "3600")
    clean_env.setenv("AUTOSTOP_IDLE_MINUTES", "30")
    clean_env.setenv("INFERENCE_API_PORT", "8000")
    clean_env.setenv("INFERENCE_PORT", "8000")
    assert settings.load(settings.WatchdogSettings).AUTOSTOP_IDLE_MINUTES == 30.0
    assert [o.line() for o in legacy_env.outcomes()] == [
        "INFERENCE_API_PORT=8000 read as INFERENCE_PORT=8000",  # both say the same
        "IDLE_TIMEOUT_SECONDS=3600 ignored: AUTOSTOP_IDLE_MINUTES=30 is set and wins",
    ]
    clean_env.setenv("AUTOSTOP_IDLE_MINUTES", "60.0")
    assert legacy_env.outcomes()[1].line() == (
        "IDLE_TIMEOUT_SECONDS=3600 read as AUTOSTOP_IDLE_MINUTES=60")


def test_a_new_name_wins_even_over_a_bad_old_value_it_replaces(clean_env):
    clean_env.setenv("INFERENCE_API_PORT", "http")
    clean_env.setenv("INFERENCE_PORT", "9000")
    assert settings.load(settings.InferenceSettings).INFERENCE_PORT == 9000


def test_of_two_old_names_for_one_variable_the_first_declared_wins():
    outcomes = translate({"OUTPUT_PATH": "/a/m.pt", "METRICS_OUT": "/b/m.json"}, "/repo")
    assert [o.line() for o in outcomes] == [
        "OUTPUT_PATH=/a/m.pt read as TRAIN_OUTPUT_DIR=/a",
        "METRICS_OUT=/b/m.json ignored: OUTPUT_PATH=/a/m.pt is set and wins",
    ]


def test_the_bootstrap_logs_one_line_per_old_name(clean_env, tmp_path):
    clean_env.setenv("IDLE_TIMEOUT_SECONDS", "3600")
    clean_env.setenv("VENV_DIR", "/opt/venvs/chessbot")
    clean_env.setenv("START_IDLE_WATCHDOG", "1")
    env = dict(os.environ)
    clean_env.setenv("AUTOSTOP_IDLE_MINUTES", "30")
    lines = [o.line() for o in legacy_env.outcomes()]
    assert lines == ["IDLE_TIMEOUT_SECONDS=3600 ignored: AUTOSTOP_IDLE_MINUTES=30 is set and wins",
                     "VENV_DIR=/opt/venvs/chessbot has no effect: the services and pip use "
                     "APPLIANCE_PYTHON (the image sets it to its venv's python)"]
    assert [o.line() for o in legacy_env.outcomes(env)][0] == (
        "IDLE_TIMEOUT_SECONDS=3600 read as AUTOSTOP_IDLE_MINUTES=60")


# -- secrets ------------------------------------------------------------------------------------


def test_secret_values_never_appear_in_the_lines_or_errors(monkeypatch):
    secret = OldVariable("OLD_API_TOKEN", "INFERENCE_API_TOKEN", "the API token", "same meaning")
    monkeypatch.setattr(legacy_env, "OLD_VARIABLES", (secret,))
    canary = "canary-old-token-0c1d"
    [read] = translate({"OLD_API_TOKEN": canary}, "/repo")
    assert read.line() == "OLD_API_TOKEN=*** read as INFERENCE_API_TOKEN=***"
    [ignored] = translate({"OLD_API_TOKEN": canary, "INFERENCE_API_TOKEN": canary + "-new"},
                          "/repo")
    assert ignored.line() == "OLD_API_TOKEN=*** ignored: INFERENCE_API_TOKEN=*** is set and wins"
    assert read.named(canary) == "OLD_API_TOKEN='***' (read as INFERENCE_API_TOKEN=***)"
    monkeypatch.setenv("OLD_API_TOKEN", canary)
    monkeypatch.delenv("INFERENCE_API_TOKEN", raising=False)
    inf = settings.load(settings.InferenceSettings)
    assert inf.INFERENCE_API_TOKEN is not None
    assert inf.INFERENCE_API_TOKEN.get_secret_value() == canary


# -- behaviours honoured through variables added for them ---------------------------------------


def test_gpu_memory_in_use_counts_as_activity_from_the_old_threshold(clean_env):
    from appliance.watchdog import __main__ as wd_main
    from appliance.watchdog.signals import GpuSample, GpuSignal

    clean_env.setenv("IDLE_GPU_MEM_MB_THRESHOLD", "2048")
    clean_env.setenv("AUTOSTOP_ACTION", "none")
    [gpu] = [s for s in wd_main.build_signals(wd_main.Config.load()) if s.name == "gpu"]
    assert isinstance(gpu, GpuSignal) and gpu.mem_threshold == 2048.0

    def reading(mem_mb: float, util: float = 0.0) -> tuple[str, str]:
        sig = GpuSignal(gpu.threshold, lambda: [GpuSample(0, util, mem_mb, 81559.0)],
                        mem_threshold_mb=gpu.mem_threshold)
        r = sig.read(0.0)
        return r.state, r.detail

    assert reading(2048.0) == ("active", "gpu0 0% 2048/81559 MiB (busy above 5% or from 2048 "
                               "MiB in use)")
    assert reading(2047.0)[0] == "quiet"
    unset = GpuSignal(5.0, lambda: [GpuSample(0, 0.0, 70000.0, 81559.0)])
    assert unset.read(0.0).state == "quiet"  # without the threshold memory never counts


def test_inference_default_topk_from_the_old_name(clean_env, tmp_path):
    import torch
    from fastapi.testclient import TestClient

    from appliance.inference.app import Service, create_app
    from appliance.model.checkpoint import save_checkpoint
    from appliance.model.network import ModelConfig, MovePredictor

    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, MovePredictor(ModelConfig(embed_dim=16, hidden_dim=24)))
    clean_env.setenv("INFERENCE_API_TOPK_DEFAULT", "12")
    service = Service(settings.load(settings.InferenceSettings), model, tmp_path, "cpu")
    assert service.load_once()
    with TestClient(create_app(service, load_in_background=False)) as client:
        assert len(client.post("/infer", json={"moves": ["e2e4"]}).json()["topk"]) == 12
        assert len(client.post("/infer", json={"moves": ["e2e4"], "topk": 3}).json()["topk"]) == 3
        batch = client.post("/infer/batch", json={"positions": [{"moves": []},
                                                                {"moves": [], "topk": 2}]})
        assert [len(r["topk"]) for r in batch.json()["results"]] == [12, 2]
    clean_env.setenv("INFERENCE_API_TOPK_DEFAULT", "51")
    with pytest.raises(settings.SettingsError, match=r"^bad environment: "
                       r"INFERENCE_API_TOPK_DEFAULT='51' \(read as INFERENCE_TOPK_DEFAULT=51\): "
                       r"Input should be less than or equal to 50"):
        settings.load(settings.InferenceSettings)


def test_a_hand_started_inference_server_reads_the_old_names(clean_env, monkeypatch):
    from appliance.inference import __main__ as inf_main

    for name, value in (("INFERENCE_API_HOST", "127.0.0.1"), ("INFERENCE_API_PORT", "8011"),
                        ("INFERENCE_API_VERBOSE", "0"), ("INFERENCE_API_DEVICE", "cpu")):
        clean_env.setenv(name, value)
    seen = {}
    monkeypatch.setattr(inf_main.uvicorn, "run", lambda app, **kw: seen.update(
        kw, switch_us=round(sys.getswitchinterval() * 1e6)))
    monkeypatch.setattr(inf_main, "Service", lambda cfg, model, repo, device, progress: seen.update(
        device=device))
    monkeypatch.setattr(inf_main, "create_app", lambda service: "app")
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    switch = sys.getswitchinterval()
    try:
        root.handlers[:] = []  # basicConfig configures only a root without handlers
        assert inf_main.main([]) == 0
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.setswitchinterval(switch)
    assert seen == {"host": "127.0.0.1", "port": 8011, "log_level": "warning",
                    "access_log": False, "device": "cpu", "switch_us": 100}


def test_the_watchdog_log_level_from_the_old_name(clean_env, monkeypatch):
    from appliance.watchdog import __main__ as wd_main

    clean_env.setenv("IDLE_WATCHDOG_VERBOSE", "0")
    clean_env.setenv("AUTOSTOP_ACTION", "none")

    class Seen(Exception):
        pass

    def setup(program: str, redact: object, stream: object, level: str) -> None:
        raise Seen(program, level)

    monkeypatch.setattr(wd_main, "setup_service_logging", setup)
    with pytest.raises(Seen) as seen:
        wd_main._run(wd_main.Config.load())
    assert seen.value.args == ("idle-watchdog", "WARNING")


def test_sync_uploads_to_the_repo_type_and_at_the_log_level_of_the_old_names(
        clean_env, hub, tmp_path):
    from appliance.sync import __main__ as sync_main
    from tests.utils.hubemu import hf_env

    src = tmp_path / "artifacts" / "run1"
    src.mkdir(parents=True)
    (src / "model_best.pt").write_bytes(b"\0weights")
    env = hf_env(hub, tmp_path, HF_REPO_TYPE="dataset", HF_SYNC_VERBOSE="0",
                 HF_REPO_ID="acme/artifacts", HF_SYNC_STATE_DIR=str(tmp_path / "state"))
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_REPO_TYPE", "HF_SYNC_VERBOSE", "HF_REPO_ID",
                 "HF_SYNC_STATE_DIR"):
        clean_env.setenv(name, env[name])
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        assert sync_main.main(["once", "--source", str(src.parent)]) == 0
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    repo = hub.state.store.get("dataset", "acme/artifacts")
    assert sorted(repo.head.files) == [".gitattributes", "run1/model_best.pt"]
    with pytest.raises(HubError):
        hub.state.store.get("model", "acme/artifacts")
    clean_env.setenv("HF_REPO_TYPE", "space")
    assert sync_main.main(["status"]) == 2
