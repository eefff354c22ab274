"""scripts/diagnose_policy.py end to end: a real (debug-preset, untrained) goal-pointer checkpoint
on a dataset converted from real rosbag2 files. The numbers are an untrained policy's; what is
checked is that every row is computed and that the goal options reach the targets."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from apt_core.contract import load_contract
from apt_core.data.convert import convert
from apt_core.data.synthetic import write_synthetic_bag

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "apt_policy"))
from checkpoints import make_debug_checkpoint  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diag")
    contract = load_contract()
    for i, text in enumerate(["pick up the red cube", "push the blue cube to the left"]):
        write_synthetic_bag(root / "bags" / f"episode_{i}", contract, n_frames=24, instruction=text, seed=i)
    convert(root / "bags", root / "dataset", contract)
    ck = make_debug_checkpoint(root / "ck", stage=2, goal_dim=3, goal_input=True, goal_pointer=True)
    return ck, root / "dataset"


def _run(monkeypatch, capsys, *argv: str) -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("diagnose_policy", ROOT / "scripts" / "diagnose_policy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["diagnose_policy.py", *argv])
    mod.main()
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_diagnose_policy_reports_every_row_for_a_goal_pointer_policy(setup, monkeypatch, capsys) -> None:
    ck, data = setup
    rows = _run(monkeypatch, capsys, str(ck), str(data), "--frames", "8", "--goal-source", "action")
    assert "goal targets from the action joints" in rows
    for name in (
        "chunk error vs demonstration [rad]",
        "change when the instruction is swapped [rad]",
        "goal error, median [cm]",
        "predicting the mean goal instead [cm]",
    ):
        assert re.fullmatch(r"\d+\.\d+", rows[name]), (name, rows.get(name))
    assert re.match(
        r"-?\d+\.\d+ \(\d+ frames\)",
        rows["chunk end's move along a 3 cm goal move, tool 6 or more cm from its goal"],
    )


def test_diagnose_policy_passes_the_goal_options_to_the_targets(setup, monkeypatch, capsys) -> None:
    import apt_core.data.goals as goals

    seen: list[dict] = []
    real = goals.dataset_goals

    def spy(*a, **k):
        seen.append(k)
        return real(*a, **k)

    monkeypatch.setattr(goals, "dataset_goals", spy)
    ck, data = setup
    rows = _run(monkeypatch, capsys, str(ck), str(data), "--frames", "4", "--goal-push-end", "0.05")
    assert "goal targets from the state joints, push ends (travel 0.05 m)" in rows
    assert seen and seen[0]["push_end"] == 0.05 and seen[0]["source"] == "state"
    with pytest.raises(SystemExit):
        _run(monkeypatch, capsys, str(ck), str(data), "--goal-source", "ee")
