"""apt-compare: every variant trains on the same data and budget and is evaluated on the same scenes."""

from __future__ import annotations

import csv
import json
import os

import pytest

from apt_training.compare import VARIANTS, CompareConfig, run, shared_memo_budget


def _small(dataset, tmp_path, **kw) -> CompareConfig:
    """A comparison small enough for a test: one seed, one step per stage, one scene."""
    base = dict(
        dataset=str(dataset),
        out_dir=str(tmp_path / "cmp"),
        seeds=(0,),
        stage1_steps=1,
        stage2_steps=1,
        splits=("in_distribution",),
        episodes=1,
        results=str(tmp_path / "results.md"),
        threads=1,
    )
    return CompareConfig(**{**base, **kw})


def test_compare_trains_every_variant_and_writes_the_report(tiny_dataset, tmp_path, monkeypatch):
    cc = _small(
        tiny_dataset, tmp_path, stage1_steps=2, stage2_steps=2, splits=("in_distribution", "paraphrase")
    )
    report = run(cc).read_text()
    for v in VARIANTS:
        assert report.count(f"| {v} |") == 3  # success, reached-the-object and grasp rows
    assert "Partial progress:" in report and "| variant | grasps (gripper shut) |" in report
    assert "pooled over 1 training seed(s) x 1 episodes = 1 episodes per cell" in report
    # the report says which variants train the backbone (the test's mode is "full")
    assert "single_stage and apt_finetune train every weight of the `tiny` backbone" in report
    assert "knowledge_insulation stops the action loss's gradient" in report
    rows = list(csv.DictReader((tmp_path / "cmp" / "episodes.csv").open()))
    assert len(rows) == len(VARIANTS) * 2
    assert all(float(r["min_distance"]) >= 0 for r in rows)  # partial progress measured per episode
    # every variant saw exactly the same scenes and instructions
    scenes = {
        v: [(r["split"], r["seed"], r["instruction"]) for r in rows if r["variant"] == v] for v in VARIANTS
    }
    assert len({tuple(s) for s in scenes.values()}) == 1
    # budgets: baselines train stage1 + stage2 steps from scratch, APT variants share one stage 1
    meta = lambda p: json.loads((tmp_path / "cmp" / "seed0" / p / "final" / "meta.json").read_text())  # noqa: E731
    assert meta("single_stage")["step"] == 4 and meta("single_stage")["variant"] == "single_stage"
    assert meta("knowledge_insulation")["backbone_mode"] == "full"
    assert meta("apt_stage1")["step"] == 2 and meta("apt_finetune")["step"] == 2
    assert meta("apt_frozen")["backbone_mode"] == "frozen" and meta("apt_finetune")["backbone_mode"] == "full"
    assert meta("token_insertion")["variant"] == "token_insertion"

    # a reference checkpoint is evaluated once on the same scenes and protocol, as an extra row
    from dataclasses import replace

    ref = tmp_path / "cmp" / "seed0" / "apt_frozen" / "final"
    with_ref = run(replace(cc, reference=str(ref))).read_text()
    assert with_ref.count("| reference |") == 3 and f"--reference {ref}" in with_ref
    rows = list(csv.DictReader((tmp_path / "cmp" / "episodes.csv").open()))

    def same(v: str) -> list[tuple]:
        keys = ("split", "seed", "instruction", "success", "steps")
        return [tuple(r[k] for k in keys) for r in rows if r["variant"] == v]

    assert same("reference") == same("apt_frozen")  # the same checkpoint, scenes and noise: the same episodes
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        replace(cc, reference=str(tmp_path))

    # resumable: a second run trains nothing and re-evaluates nothing (each cell's episodes are
    # stored beside its checkpoint), and gives the same table
    import apt_training.compare as compare

    def no_eval(*a, **k):
        raise AssertionError("a finished cell was evaluated again")

    monkeypatch.setattr(compare, "evaluate", no_eval)
    assert run(cc).read_text().split("\n\n", 2)[2] == report.split("\n\n", 2)[2]
    # an evaluation at another sampling noise is not taken from the cache of this one
    with pytest.raises(AssertionError, match="evaluated again"):
        compare._eval_cell(replace(cc, noise_scale=1.0), "single_stage", 0)
    assert "--noise-scale 0`" in report and "noise scale 0 (as the policy node serves them)" in report
    # a report written before the last cell says it is partial
    partial = compare.render_report(cc, compare._eval_cell(cc, "single_stage", 0)[0], 1.0, done=(1, 5))
    assert "Partial: 1 of 5" in partial and "| single_stage |" in partial and "| apt_frozen |" not in partial
    # the report says what the recipe trained with when it was written (recipes change over time)
    assert f"Recipe `{cc.recipe}` at the time: objective" in partial
    # a cell trained on to more steps is evaluated again: the cache belongs to the weights it measured
    with pytest.raises(AssertionError, match="evaluated again"):
        compare._eval_cell(replace(cc, stage1_steps=3), "single_stage", 0)
    assert (
        json.loads((tmp_path / "cmp" / "seed0" / "single_stage" / "final" / "meta.json").read_text())["step"]
        == 5
    )


def test_report_names_what_of_the_backbone_each_mode_trains():
    from apt_training.compare import _backbone_line

    lora = _backbone_line(CompareConfig(dataset="d", recipe="cpu-demo", finetune_mode="lora"))
    assert lora.startswith(
        "single_stage and apt_finetune train LoRA (rank 16) on the `query`, `key`, `value`, `dense` "
        "layers of the `text` part of the `minilm_effnet` backbone"
    )
    assert "0.1 times the expert's learning rate" in lora and "single-stage with the backbone frozen" in lora
    only_apt = _backbone_line(
        CompareConfig(dataset="d", recipe="debug", finetune_mode="lora", variants=("apt_finetune",))
    )
    assert only_apt.startswith("apt_finetune trains LoRA (rank 16) on the `qkv`, `proj` layers of the `tiny`")
    assert "knowledge_insulation" not in only_apt
    frozen = CompareConfig(
        dataset="d", finetune_mode="frozen", variants=("single_stage", "apt_frozen", "token_insertion")
    )
    assert _backbone_line(frozen) == "No variant trains the backbone: every one keeps it frozen."


def test_compare_rejects_unknown_variants():
    with pytest.raises(ValueError, match="unknown variants"):
        CompareConfig(dataset="x", variants=("apt_magic",))
    with pytest.raises(ValueError, match=r"apt_finetune \(= apt_frozen\)"):
        CompareConfig(dataset="x", finetune_mode="frozen")
    CompareConfig(
        dataset="x", finetune_mode="frozen", variants=("single_stage", "apt_frozen", "token_insertion")
    )


def test_grasp_table_counts_shut_grasps_and_wrong_objects():
    from apt_training.compare import _grasp_table

    cc = CompareConfig(
        dataset="x", variants=("single_stage", "apt_frozen", "token_insertion"), finetune_mode="frozen"
    )
    base = dict(split="in_distribution", seed=0, instruction="pick up the red cube", family="pick",
                success=False, steps=10, subtasks_done=0)  # fmt: skip
    rows = [
        dict(base, variant="single_stage", grasp_offset=0.01, wrong_object=False, lifted=True),
        dict(base, variant="single_stage", grasp_offset=0.20, wrong_object=True),
        dict(base, variant="single_stage", grasp_offset=0.15, wrong_object=True),
        dict(base, variant="single_stage"),  # never shut (a push, or a grasp that never closed)
        dict(base, variant="apt_frozen"),  # cached before grasps were measured: no offset at all
    ]
    lines = _grasp_table(cc, rows).splitlines()
    assert lines[2] == "| single_stage | 3 | 2/3 (67%) | 15.0 cm | 1/4 |"
    assert lines[3] == "| apt_frozen | 0 | n/a | n/a | 0/1 |"
    assert len(lines) == 4  # token_insertion has no episodes: no row


def test_compare_records_its_own_demonstrations(ros_env, tmp_path):
    """--record: the scripted expert's demos go through the ROS sim into rosbag2, are converted, and
    the comparison trains and evaluates on them: the whole table from one command."""
    cc = _small(tmp_path / "cmp" / "dataset", tmp_path, variants=("single_stage",), record=2, record_seed=5)
    report = run(cc).read_text()
    assert "--record 2 --record-seed 5 --record-workers 1 --dataset" in report
    done = json.loads((tmp_path / "cmp" / "demos" / "DONE.json").read_text())
    assert (done["episodes"], done["seed"]) == (2, 5)
    info = json.loads((tmp_path / "cmp" / "dataset" / "meta" / "info.json").read_text())
    assert 1 <= info["total_episodes"] <= 2  # the recorder keeps the demos the expert completed
    rows = list(csv.DictReader((tmp_path / "cmp" / "episodes.csv").open()))
    assert [r["variant"] for r in rows] == ["single_stage"]


def test_compare_refuses_recorded_scenes_that_reach_the_evaluation():
    with pytest.raises(ValueError, match="reach the evaluation scenes"):
        CompareConfig(dataset="x", record=200, record_seed=900)
    CompareConfig(dataset="x", record=200, record_seed=800)  # seeds 800..999: below 1000


def test_compare_runs_seeds_in_parallel_processes(tiny_dataset, tmp_path):
    """--jobs 2: two training seeds in two spawned processes give the same table as one after the
    other (each seed's cells are deterministic on one thread)."""
    kw = dict(
        dataset=str(tiny_dataset),
        seeds=(0, 1),
        stage1_steps=1,
        stage2_steps=1,
        variants=("single_stage", "apt_frozen"),
        finetune_mode="frozen",
        splits=("in_distribution",),
        episodes=1,
        threads=1,
    )
    tables = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        report = run(CompareConfig(out_dir=str(out), results=str(out / "results.md"), jobs=jobs, **kw))
        rows = list(csv.DictReader((out / "episodes.csv").open()))
        assert [(r["train_seed"], r["variant"]) for r in rows] == [
            ("0", "single_stage"), ("0", "apt_frozen"), ("1", "single_stage"), ("1", "apt_frozen")
        ]  # fmt: skip
        assert all(
            (out / f"seed{s}" / v / "final" / "meta.json").is_file() for s in (0, 1) for v in kw["variants"]
        )
        tables.append([{k: v for k, v in r.items() if k != "seconds"} for r in rows])
        assert "Partial:" not in report.read_text()
        pids = {
            s: {json.loads(f.read_text())["pid"] for f in (out / f"seed{s}").glob("*/eval_*.json")}
            for s in (0, 1)
        }
        memo_caps = {
            json.loads((out / f"seed{s}" / v / "train_config.json").read_text())["cache_features_gb"]
            for s in (0, 1)
            for v in kw["variants"]
        }
        # one process trains at a time: each run takes its own share; two at once share one budget
        assert (memo_caps == {0.0}) if jobs == 1 else (len(memo_caps) == 1 and memo_caps.pop() > 0)
        if jobs == 2:  # each seed in its own worker process, not this one
            assert (
                len(pids[0]) == len(pids[1]) == 1
                and pids[0] != pids[1]
                and os.getpid() not in pids[0] | pids[1]
            )
    assert tables[0] == tables[1]
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        CompareConfig(dataset="x", jobs=0)


def test_parallel_trainings_share_one_memo_budget(tmp_path):
    """--jobs N: the processes training at once split half the available memory between them
    (each alone would take half for itself); an explicit cap or a single process is left as it is."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    cc = CompareConfig(dataset="x", jobs=3)
    shared = shared_memo_budget(cc, 3, str(meminfo))
    assert shared.cache_features_gb == pytest.approx(20000000 * 1024 / 2 / 3 / 1e9)
    assert shared_memo_budget(cc, 1, str(meminfo)).cache_features_gb == 0.0  # train() picks its own
    explicit = CompareConfig(dataset="x", jobs=3, cache_features_gb=2.5)
    assert shared_memo_budget(explicit, 3, str(meminfo)).cache_features_gb == 2.5
    with pytest.raises(ValueError, match="cache_features_gb must be >= 0"):
        CompareConfig(dataset="x", cache_features_gb=-1)


def test_cli_refuses_bad_options_by_name(capsys, tmp_path):
    from apt_training.compare import main

    for argv, msg in (
        (["--jobs", "0"], "jobs must be >= 1"),
        (["--record", "200", "--record-seed", "900"], "reach the evaluation scenes"),
        (["--reference", str(tmp_path)], "not a checkpoint folder"),
        (["--noise-scale", "-1"], "noise_scale must be"),
        (["--cache-features-gb", "-1"], "cache_features_gb must be >= 0"),
    ):
        with pytest.raises(SystemExit):
            main(["--dataset", str(tmp_path / "none"), *argv])
        assert msg in capsys.readouterr().err


def test_compare_measures_policies_open_loop_on_heldout_demos(tiny_dataset, tmp_path):
    """--heldout: every cell (and the reference) is measured open loop on the same frames; a
    reference that is a cell's own checkpoint scores exactly what that cell scores."""
    from dataclasses import replace

    cc = _small(
        tiny_dataset,
        tmp_path,
        variants=("single_stage", "apt_frozen"),
        finetune_mode="frozen",
        heldout=str(tiny_dataset),
        heldout_frames=6,
    )
    run(cc)
    ref = tmp_path / "cmp" / "seed0" / "apt_frozen" / "final"
    report = run(replace(cc, reference=str(ref))).read_text()
    table = report.split("Held-out demonstrations, open loop: on 6 frames of")[1].split("\n\n")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"single_stage", "apt_frozen", "reference"}
    assert rows["reference"].split(" | ")[1:] == rows["apt_frozen"].split(" | ")[1:]
    err = float(rows["single_stage"].split(" | ")[1])
    assert 0 < err < 10  # radians: a real measurement, not a placeholder
    assert f"--heldout {tiny_dataset} --heldout-frames 6" in report
