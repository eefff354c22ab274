"""apt-pipeline on the debug preset, end to end: ROS recording -> rosbag2 -> dataset -> 2 stages -> eval."""

from __future__ import annotations

import dataclasses
import json

import pytest

from apt_core.data.bag_reader import bag_custom_data
from apt_core.model.checkpoint import load_checkpoint
from apt_core.sim.env import SceneMismatchError, check_dataset_scene, scene_fingerprint
from apt_training.pipeline import PipelineConfig, process_ends, run, seed_ranges


@pytest.mark.ros
@pytest.mark.slow
def test_pipeline_debug_end_to_end(ros_env, tmp_path):
    pc = PipelineConfig(
        out=str(tmp_path / "run"),
        recipe="debug",
        episodes=3,
        stage1_steps=4,
        stage2_steps=4,
        eval_episodes=1,
        eval_splits=("in_distribution", "chain"),
        export=str(tmp_path / "policy"),
        threads=1,
        record_workers=2,  # two recorder processes, each in its own ROS domain
        train_scene_episodes=1,
        record_disturbance=0.02,  # DART-style recording noise, through the recorder to the sim node
        record_missed_grasp=1.0,  # every grasping demo starts after a missed grasp
        record_missed_grasp_near="any",  # beside an object drawn from the seed
        stage2_set=("frame_stride=2",),  # a training option passed through to stage 2 only
    )
    report = run(pc).read_text()
    run_dir = tmp_path / "run"
    # real rosbag2 (mcap) episodes recorded through the ROS nodes
    bags = sorted((run_dir / "demos").glob("episode_*"))
    assert len(bags) == 3 and all(list(b.glob("*.mcap")) for b in bags)
    summaries = [json.loads((run_dir / "demos" / f"summary_{k}.json").read_text()) for k in (0, 1)]
    assert [[e["seed"] for e in s["episodes"]] for s in summaries] == [[0, 1], [2]]
    done = json.loads((run_dir / "demos" / "DONE.json").read_text())
    assert done["bags"] == 3 and done["disturbance"] == 0.02 and done["missed_grasp"] == 1.0
    assert done["missed_grasp_near"] == "any"
    assert all(bag_custom_data(b)["disturbance"] == "0.02" for b in bags)  # the sim node really had it
    assert "DART-style disturbance 0.02 rad" in report and "--record-disturbance 0.02" in report
    started = {e["seed"]: e["missed_start"] for s in summaries for e in s["episodes"]}
    assert started == {0: True, 1: True, 2: True}  # three pick-and-place scenes
    assert all(bag_custom_data(b)["missed_grasp_start"] == "true" for b in bags)
    assert all(bag_custom_data(b)["missed_grasp_near"] == "any" for b in bags)
    assert "--record-missed-grasp 1 --record-missed-grasp-near any" in report
    assert "starting after a missed grasp beside any object" in report
    info = json.loads((run_dir / "dataset" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3 and info["codebase_version"] == "v3.0"
    assert "stage 1: 4 steps" in report and "stage 2: 4 steps" in report
    stage_cfg = {k: json.loads((run_dir / f"stage{k}" / "train_config.json").read_text()) for k in (1, 2)}
    assert stage_cfg[1]["frame_stride"] == 1 and stage_cfg[2]["frame_stride"] == 2
    assert "--stage2-set frame_stride=2" in report
    assert "| in_distribution | 1 |" in report and "| chain | 1 |" in report
    assert "Actions sampled at noise scale 0 (as the policy node serves them)" in report
    # the memorisation check: the same policy on the recorded layouts (scene seed 0)
    trained = report.split("training scenes (scene seeds 0..0)")[1]
    assert all(
        f"| {s} | 1 |" in trained for s in ("in_distribution", "task_perturbation", "position_perturbation")
    )
    assert (run_dir / "eval_training_scenes" / "summary.md").exists()
    policy, _, meta = load_checkpoint(tmp_path / "policy", expect={"stage": 2})
    assert meta["variant"] == "apt" and (tmp_path / "policy" / "TRAINING_REPORT.md").exists()

    # a re-run skips every finished step and reproduces the same evaluation
    again = run(pc).read_text()
    assert again.split("## Evaluation")[1] == report.split("## Evaluation")[1]
    assert "record done in an earlier run" in again and "stage2 done in an earlier run" in again
    assert "done in an earlier run" not in report
    # demos recorded with other noise are not silently reused
    with pytest.raises(
        ValueError, match="recorded with disturbance 0.02, this run asks for --record-disturbance 0.0"
    ):
        run(dataclasses.replace(pc, record_disturbance=0.0))
    with pytest.raises(
        ValueError, match="recorded with missed_grasp 1.0, this run asks for --record-missed-grasp 0.0"
    ):
        run(dataclasses.replace(pc, record_missed_grasp=0.0))

    # the simulator scene travels with the data: bag metadata -> dataset meta; a changed scene
    # (e.g. a moved camera) is refused instead of training on one view and evaluating on another
    scene = scene_fingerprint()
    assert all(bag_custom_data(b)["sim_scene"] == scene for b in bags)
    apt_meta = run_dir / "dataset" / "meta" / "apt.json"
    assert json.loads(apt_meta.read_text())["sim_scene"] == [scene]
    assert check_dataset_scene(run_dir / "dataset") == ""
    done = run_dir / "demos" / "DONE.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "sim_scene": "0123456789ab"}))
    with pytest.raises(SceneMismatchError, match="recorded in simulator scene '0123456789ab'"):
        run(pc)
    apt_meta.write_text(json.dumps({**json.loads(apt_meta.read_text()), "sim_scene": ["0123456789ab"]}))
    with pytest.raises(SceneMismatchError, match="Record the demonstrations again"):
        check_dataset_scene(run_dir / "dataset")


def test_seed_ranges_split_the_seeds_without_gaps():
    assert seed_ranges(0, 3, 2) == [(0, 2), (2, 1)]
    assert seed_ranges(10, 1000, 4) == [(10, 250), (260, 250), (510, 250), (760, 250)]
    assert seed_ranges(5, 2, 8) == [(5, 1), (6, 1)]  # never more recorders than episodes
    assert seed_ranges(0, 7, 1) == [(0, 7)]
    with pytest.raises(ValueError, match="record_workers"):
        PipelineConfig(record_workers=0)
    with pytest.raises(ValueError, match="train_scene_episodes"):
        PipelineConfig(episodes=3, train_scene_episodes=4)
    with pytest.raises(ValueError, match="record_disturbance"):
        PipelineConfig(record_disturbance=-0.1)
    with pytest.raises(ValueError, match="record_missed_grasp is a share of episodes"):
        PipelineConfig(record_missed_grasp=2.0)
    with pytest.raises(ValueError, match="record_missed_grasp_near must be one of"):
        PipelineConfig(record_missed_grasp_near="nearest")


def test_stage_options_are_typed_and_checked_by_name():
    pc = PipelineConfig(stage2_set=("goal_weight=0.5", "augment=false", "eval_splits=paraphrase,chain"))
    assert pc.stage_overrides(2) == {
        "goal_weight": 0.5,
        "augment": False,
        "eval_splits": ("paraphrase", "chain"),
    }
    assert pc.stage_overrides(1) == {}
    with pytest.raises(ValueError, match="--stage2-set 'goal_weight': expected NAME=VALUE"):
        PipelineConfig(stage2_set=("goal_weight",))
    with pytest.raises(ValueError, match="'goal_wieght' is not a training option"):
        PipelineConfig(stage2_set=("goal_wieght=0.5",))
    with pytest.raises(ValueError, match="--stage1-set 'steps=5': 'steps' .* the pipeline sets it"):
        PipelineConfig(stage1_set=("steps=5",))
    with pytest.raises(ValueError, match="'x' is not a valid float"):
        PipelineConfig(stage2_set=("goal_weight=x",))
    with pytest.raises(ValueError, match="'maybe' is not a valid bool"):
        PipelineConfig(stage2_set=("augment=maybe",))
    # well-typed but invalid for the stage: TrainConfig's own check, named with the flag
    with pytest.raises(ValueError, match="--stage1-set goal_weight=0.5: .*goal_weight trains a grounding"):
        PipelineConfig(stage1_set=("goal_weight=0.5",))
    with pytest.raises(ValueError, match="--stage2-set frame_stride=0: .*frame_stride must be >= 1"):
        PipelineConfig(stage2_set=("frame_stride=0",))


def test_process_ends_finds_each_training_process_in_the_metrics():
    def rows(*steps_and_times):
        return [{"step": s, "time_s": t} for s, t in steps_and_times]

    # one process; then trained to 20, killed at 30 and resumed, then trained on to 50
    assert process_ends(rows((10, 1.0), (20, 2.0))) == [20]
    assert process_ends(rows((10, 1.0), (20, 2.0), (30, 1.1), (40, 0.9), (50, 2.0))) == [20, 30, 50]
    assert process_ends([]) == []


def test_evaluation_noise_is_checked_by_name():
    with pytest.raises(ValueError, match="eval_noise_scale: noise_scale must be a finite number >= 0"):
        PipelineConfig(eval_noise_scale=-0.5)
    assert PipelineConfig().eval_noise_scale == 0.0  # as the policy node serves
