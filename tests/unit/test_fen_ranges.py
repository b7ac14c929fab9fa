"""FEN fields out of range (a full-move number of 20 digits used to overflow the feature arrays):
one check where FENs enter (`start_board`), seen as a 422 by the inference API and as a
file:line error by train, evaluate and publish."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from appliance import settings
from appliance.datasets.publish import inspect_dataset
from appliance.datasets.rows import DatasetError
from appliance.inference.app import Service, create_app
from appliance.model.checkpoint import save_checkpoint
from appliance.model.encoding import EncodingError, encode_moves, start_board
from appliance.model.network import ModelConfig, MovePredictor
from appliance.training import evaluate, train
from tests.utils.datasets import make_dataset

BOARD = "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq -"
HUGE = f"{BOARD} 0 99999999999999999999"
HUGE_ERROR = (f"bad FEN '{HUGE}': full-move number 99999999999999999999 is out of range "
              "(1 to 10,000)")


@pytest.mark.parametrize(("fen", "message"), [
    (HUGE, HUGE_ERROR),
    (f"{BOARD} 0 10001", f"bad FEN '{BOARD} 0 10001': full-move number 10001 is out of range "
     "(1 to 10,000)"),
    (f"{BOARD} 20001 1", f"bad FEN '{BOARD} 20001 1': half-move clock 20001 is out of range "
     "(0 to 20,000)"),
    (f"{BOARD} {'9' * 50} 1", f"bad FEN '{(BOARD + ' ' + '9' * 50)[:100]}'... (105 chars): "
     f"half-move clock {'9' * 30}... (50 chars) is out of range (0 to 20,000)"),
    (f"{BOARD} 0 -3", f"bad FEN '{BOARD} 0 -3': fullmove number cannot be negative: "
     f"'{BOARD} 0 -3'"),
])
def test_out_of_range_fields_are_encoding_errors(fen: str, message: str):
    with pytest.raises(EncodingError) as err:
        start_board(fen)
    assert str(err.value) == message
    with pytest.raises(EncodingError):
        encode_moves(["e2e4"], fen, final=True)


def test_the_limits_themselves_encode():
    enc = encode_moves(["e2e4"], f"{BOARD} 20000 10000", final=True)
    assert len(enc.inputs) == 2 and int(enc.inputs.side[-1]) == 1


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8)))
    for key in [k for k in os.environ if k.startswith("INFERENCE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("INFERENCE_HEARTBEAT_FILE", str(tmp_path / "hb"))
    service = Service(settings.load(settings.InferenceSettings), model, tmp_path, "cpu")
    assert service.load_once()
    with TestClient(create_app(service, load_in_background=False)) as c:
        yield c


def test_inference_answers_422(client: TestClient):
    r = client.post("/infer", json={"fen": HUGE, "moves": ["e2e4"]})
    assert (r.status_code, r.json()) == (422, {"error": HUGE_ERROR})
    r = client.post("/infer/batch", json={"positions": [{"moves": []}, {"fen": HUGE}]})
    assert (r.status_code, r.json()) == (422, {"error": f"positions[1]: {HUGE_ERROR}"})
    r = client.post("/infer", json={"fen": f"{BOARD} 0 10000"})
    assert r.status_code == 200  # the limit itself is fine, and the service still serves


def _with_huge_fen(root: Path) -> Path:
    make_dataset(root, 4, 2)
    lines = (root / "val.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"moves_uci": ["e2e4"], "fen": HUGE})
    (root / "val.jsonl").write_text("\n".join(lines) + "\n")
    return root / "val.jsonl"


def test_train_evaluate_and_publish_name_file_and_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    val = _with_huge_fen(tmp_path / "ds")
    expected = f"{val}:2: {HUGE_ERROR}"
    with pytest.raises(DatasetError) as err:
        inspect_dataset(tmp_path / "ds", workers=1)
    assert str(err.value) == expected
    rc = train.main(["--train", str(tmp_path / "ds" / "train.jsonl"), "--val", str(val),
                     "--output-dir", str(tmp_path / "out"), "--epochs", "1", "--device", "cpu"])
    assert (rc, capsys.readouterr().err.splitlines()[-1]) == (2, f"error: {expected}")
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8)))
    rc = evaluate.main(["--model", str(model), "--data", str(val), "--train-data",
                        str(tmp_path / "ds" / "train.jsonl"), "--device", "cpu"])
    assert (rc, capsys.readouterr().err) == (2, f"error: {expected}\n")
