"""The README's main job (`scripts/demo.sh` = `python -m apt_bringup.demo`): its report files, and the
whole command end to end over ROS (the MuJoCo sim and the policy node in their own processes, the
demo's client driving them through /apt_sim/reset and /apt/execute). The end-to-end run uses a tiny
untrained debug checkpoint, so it checks the plumbing and the outputs, not whether the task succeeds:
the shipped policy's success is measured by `apt_core.sim.evaluate` (docs/results.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from apt_bringup.demo import (
    SCENARIOS,
    Outcome,
    contact_sheet,
    evaluation_scenes,
    results_markdown,
    scene_results,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apt_policy"))
from checkpoints import make_debug_checkpoint


def _outcome(label: str, ok: bool, n_frames: int) -> Outcome:
    frames = [np.full((48, 64, 3), 25 * i, np.uint8) for i in range(n_frames)]
    return Outcome(label, f"instruction of {label}", True, ok, ok, "done" if ok else "timeout", 12.5, frames)


def test_report_and_contact_sheet(tmp_path: Path) -> None:
    outcomes = [
        _outcome("in-distribution", True, 9),
        _outcome("paraphrase", False, 3),
        _outcome("chain", False, 0),
    ]
    md = results_markdown(outcomes, Path("policies/default"))
    assert "| in-distribution | instruction of in-distribution | done | yes | done | 12.5 |" in md
    assert "| paraphrase | instruction of paraphrase | not done | no | timeout | 12.5 |" in md
    assert "1/3 instructions completed" in md
    sheet = cv2.imread(str(contact_sheet(outcomes, tmp_path / "sheet.png", per_row=6)))
    # one row per instruction that has frames (22-pixel caption + frame), six frames wide
    assert sheet.shape == (2 * (22 + 48), 6 * 64, 3)
    assert not (tmp_path / "sheet.tmp.png").exists()
    with pytest.raises(RuntimeError, match="no camera frames"):
        contact_sheet([_outcome("chain", False, 0)], tmp_path / "none.png")


def test_evaluation_scenes_pair_with_the_in_process_harness(tmp_path: Path) -> None:
    import csv

    from apt_core.sim.evaluate import write_results

    scenes = evaluation_scenes(["in_distribution", "chain"], 2, 1100)
    assert [(sp, s) for _, sp, s in scenes] == [
        ("in_distribution", 1100),
        ("in_distribution", 1101),
        ("chain", 1100),
        ("chain", 1101),
    ]
    outcomes = [_outcome(label, i == 2, 1) for i, (label, _, _) in enumerate(scenes)]
    outcomes[2].subtasks_done = 2
    res = scene_results(outcomes, scenes, rate_hz=10.0)
    write_results(res, tmp_path)
    rows = list(csv.DictReader((tmp_path / "episodes.csv").open()))
    assert [(r["split"], r["seed"], r["family"], r["success"]) for r in rows][2:] == [
        ("chain", "1100", "chain", "True"),
        ("chain", "1101", "chain", "False"),
    ]
    assert rows[2]["subtasks_done"] == "2" and rows[0]["steps"] == "125"  # 12.5 s at 10 Hz
    assert {r.split: (r.n, r.successes) for r in res.summary} == {"in_distribution": (2, 0), "chain": (2, 1)}
    with pytest.raises(ValueError, match="unknown split"):
        evaluation_scenes(["kitchen"], 1, 0)


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "apt_bringup.demo", "--checkpoint", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"no policy checkpoint at {tmp_path / 'nope'}" in r.stderr


@pytest.mark.ros
def test_demo_end_to_end_over_ros(tmp_path: Path, ros_env: dict[str, str]) -> None:
    ckpt = make_debug_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "demo"
    label = SCENARIOS[0][0]
    r = subprocess.run(
        [sys.executable, "-m", "apt_bringup.demo", "--checkpoint", str(ckpt), "--out", str(out)]
        + ["--only", label, "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=240,
        env=ros_env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (out / "results.md").read_text()
    # one row for the scenario, with the instruction the simulator drew for that scene, the
    # policy's verdict and its reason from /apt/execute, and the simulator's ground truth
    row = re.search(
        rf"^\| {label} \| (.+?) \| (done|not done) \| (yes|no) \| (.+?) \| ([0-9.]+) \|$", md, re.M
    )
    assert row, md
    assert row.group(1) in r.stdout  # the instruction was printed as it was sent
    if row.group(2) == "not done":  # an untrained policy: the 3 s task timeout or a safety fault ends it
        assert re.match(r"timeout|fault: ", row.group(4)), md
        assert float(row.group(5)) < 3.0 + 15.0  # the demo's wait for a result
    assert re.search(r"^[01]/1 instructions completed", md, re.M)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 22 and sheet.std() > 1.0  # camera frames, not blank
    assert "apt-demo: starting apt_sim" in r.stdout and "apt-demo: starting apt_policy" in r.stdout


@pytest.mark.ros
def test_demo_evaluates_scenes_over_ros(tmp_path: Path, ros_env: dict[str, str]) -> None:
    """`--splits` runs evaluation scenes through the node graph and writes the harness's tables."""
    import csv

    ckpt = make_debug_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    r = subprocess.run(
        [sys.executable, "-m", "apt_bringup.demo", "--checkpoint", str(ckpt), "--out", str(out)]
        + ["--splits", "chain", "--episodes", "1", "--seed", "1100", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=240,
        env=ros_env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (row,) = list(csv.DictReader((out / "episodes.csv").open()))
    assert (row["split"], row["seed"], row["family"]) == ("chain", "1100", "chain")
    assert row["success"] in ("True", "False") and int(row["subtasks_done"]) in (0, 1, 2)
    md = (out / "results.md").read_text()
    assert "over ROS in real time" in md and re.search(r"^\| chain \| 1 \| [01] \|", md, re.M), md
