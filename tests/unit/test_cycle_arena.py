"""`provision.py cycle --arena-against`: a short arena of the new model against the previous best
after the pod stopped, its result in the run report; bad options before anything bills; an arena
that cannot run is a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from appliance.model.checkpoint import save_checkpoint
from appliance.model.network import ModelConfig, MovePredictor
from tests.unit.podjobs_harness import POD_TIMING, Harness, cycle

pytestmark = pytest.mark.timeout(180)


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(path, MovePredictor(ModelConfig(embed_dim=8, hidden_dim=8, num_layers=1,
                                                    feature_dim=4)))
    return path


def test_cycle_plays_the_new_model_against_the_previous_one(h: Harness) -> None:
    new = _checkpoint(h.tmp / "new.pt", 1).read_bytes()
    previous = _checkpoint(h.tmp / "previous.pt", 2)
    h.pod.files = [("artifacts/model_best.pt", new),
                   ("artifacts/metrics.json", b'{"val_loss": 1.5}'),
                   ("timings.jsonl", json.dumps(POD_TIMING).encode() + b"\n")]
    out = h.tmp / "out"
    code, cli = cycle(h, "--arena-against", str(previous), "--arena-games", "2")
    assert code == 0, cli.err
    # After the pod stopped, so the arena is not billed (cost: 1.50 h, the training's).
    assert [p for p, _ in h.phases()] == ["provision", "wait_ssh", "train", "fetch_artifacts",
                                          "then_stop", "arena"]
    assert h.phases()[-1] == ("arena", "ok")
    assert "cost: $0.48 (1.50 h at $0.32/h, from create to stop)" in cli.out
    model = out / "artifacts" / "model_best.pt"
    assert f"arena: {model} vs {previous}, 2 games" in cli.err
    result = json.loads((out / "arena.json").read_text())
    assert result["players"] == {"a": {"spec": str(model), "name": str(model)},
                                 "b": {"spec": str(previous), "name": str(previous)}}
    assert result["games"] == 2 == result["wins"] + result["draws"] + result["losses"]
    pgn = (out / "arena.pgn").read_text()
    assert pgn.count('[Event "arena"]') == 2
    report = json.loads((out / "report.json").read_text())
    assert report["arena"] == {k: result[k] for k in (
        "players", "games", "wins", "draws", "losses", "score", "elo", "elo_low", "elo_high",
        "excludes_zero", "fallback")}
    md = (out / "report.md").read_text()
    section = md.split("## Arena\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    a, b = result["fallback"]["a"], result["fallback"]["b"]
    assert section[0] == (f"- A = {model}, B = {previous}: 2 games, A W {result['wins']} "
                          f"D {result['draws']} L {result['losses']}, score "
                          f"{result['score'] * 100:.1f} %")
    assert section[1].startswith("- Elo difference A - B: ")
    assert section[2:] == [
        f"- fallback A: {a['rate'] * 100:.1f} % of {a['moves']} moves (top-ranked move illegal)",
        f"- fallback B: {b['rate'] * 100:.1f} % of {b['moves']} moves (top-ranked move illegal)",
        "- games: arena.pgn"]


def test_an_arena_that_cannot_run_is_a_warning(h: Harness) -> None:
    previous = _checkpoint(h.tmp / "previous.pt", 2)
    code, cli = cycle(h, "--arena-against", str(previous), "--arena-games", "2")
    assert code == 0, cli.err  # the harness's model_best.pt is b"weights", not a checkpoint
    assert h.phases()[-1] == ("arena", "error")
    model = h.tmp / "out" / "artifacts" / "model_best.pt"
    warning = next(line for line in cli.err.splitlines() if line.startswith("warning: "))
    assert warning.startswith(f"warning: no arena: {model}: cannot load the checkpoint: ")
    assert not (h.tmp / "out" / "arena.json").exists()
    report = json.loads((h.tmp / "out" / "report.json").read_text())
    assert report["arena"] == {}
    assert "## Arena" not in (h.tmp / "out" / "report.md").read_text()


@pytest.mark.parametrize(("extra", "message"), [
    (["--arena-against", "nope.pt"], "error: --arena-against nope.pt: no such checkpoint\n"),
    (["--arena-games", "1", "--arena-against", "{prev}"], "error: --arena-games must be >= 2, "
     "got 1\n"),
])
def test_bad_arena_options_fail_before_anything_bills(h: Harness, extra: list[str],
                                                      message: str) -> None:
    previous = _checkpoint(h.tmp / "previous.pt", 2)
    code, cli = cycle(h, *(e.format(prev=previous) for e in extra))
    assert (code, cli.out, cli.err) == (2, "", message)
    assert h.server.account.pods == {}


def test_a_broken_arena_json_is_named_in_the_report(tmp_path: Path) -> None:
    from host_tools.cycle_arena import markdown, read_result

    missing: list[str] = []
    assert read_result(tmp_path, missing) == {} and missing == []
    (tmp_path / "arena.json").write_text('{"games": 2}')
    assert read_result(tmp_path, missing) == {}
    assert missing == [f"no arena: {tmp_path / 'arena.json'} is not an arena result "
                       "(KeyError('players'))"]
    assert markdown({}) == []
    lost = {"players": {"a": {"name": "new"}, "b": {"name": "old"}}, "games": 2, "wins": 0,
            "draws": 0, "losses": 2, "score": 0.0, "elo": "-inf", "elo_low": "-inf",
            "elo_high": "-inf", "excludes_zero": True, "fallback": {"a": None, "b": None}}
    assert markdown(lost) == [
        "", "## Arena", "", "- A = new, B = old: 2 games, A W 0 D 0 L 2, score 0.0 %",
        "- Elo difference A - B: -inf (95 % interval -inf .. -inf; excludes 0)",
        "- games: arena.pgn"]
