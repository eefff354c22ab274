"""Training entry points: train, kill, resume with identical losses; stage 2 from stage 1; DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from apt_core.model.checkpoint import load_checkpoint
from apt_training import stage1, stage2
from apt_training.config import TrainConfigError, train_preset
from apt_training.loop import clip_action_targets, feature_cache_budget, train_or_reuse

FAST = dict(batch_size=4, threads=1, progress=False, log_every=1, warmup_steps=2)


def losses(run: Path) -> dict[int, float]:
    """Loss per step from metrics.jsonl; a step logged twice (re-run after a kill) keeps its last value."""
    out: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            out[row["step"]] = row["loss"]
    return out


def test_stage1_trains_and_writes_checkpoint_plots_and_metrics(tiny_dataset, tmp_path):
    cfg = train_preset(
        "debug",
        dataset=str(tiny_dataset),
        out_dir=str(tmp_path / "s1"),
        steps=6,
        save_every=3,
        eval_every=6,
        eval_episodes=1,
        **FAST,
    )
    final = stage1.main(cfg)
    policy, processor, meta = load_checkpoint(final, expect={"stage": 1})
    assert meta["step"] == 6 and meta["stage"] == 1
    assert meta["joint_names"] == list(policy.cfg.joint_names) and len(meta["joint_names"]) == 7
    assert (tmp_path / "s1" / "losses.png").stat().st_size > 1000
    assert sorted(losses(tmp_path / "s1")) == [1, 2, 3, 4, 5, 6]
    # periodic evaluation in the MuJoCo simulator, logged and plotted
    evals = [
        json.loads(x) for x in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x
    ]
    assert len(evals) == 1 and evals[0]["step"] == 6
    assert evals[0]["success/in_distribution"] in (0.0, 1.0)
    assert (tmp_path / "s1" / "eval.png").exists()
    # only complete checkpoints are pointed at, and the final one carries no optimizer state
    assert not list(final.glob("train_state.*"))
    # the folder holds this run: the same config (more steps, other threads) reuses or resumes it,
    # another config is refused by name, not resumed from a checkpoint of another recipe
    assert train_or_reuse(cfg.replace(threads=1)) == final
    with pytest.raises(
        TrainConfigError, match=r"holds another run \(objective: '' there, 'flow' now; seed: 0"
    ):
        train_or_reuse(cfg.replace(objective="flow", seed=1))
    with pytest.raises(TrainConfigError, match="holds another run"):
        stage1.main(cfg.replace(n_action_history=0))
    # asked for more steps, the finished run trains on from its newest checkpoint (it used to return
    # the shorter final silently); asked for fewer, it says where that checkpoint is
    assert load_checkpoint(train_or_reuse(cfg.replace(steps=8)))[2]["step"] == 8
    assert sorted(losses(tmp_path / "s1")) == [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(TrainConfigError, match="trained for 8 steps, 6 asked"):
        train_or_reuse(cfg)


def test_killed_run_resumes_with_identical_losses(tiny_dataset, tmp_path):
    """SIGKILL a real training process after its first checkpoint; the re-run continues exactly."""
    args = [
        "--recipe",
        "debug",
        "--dataset",
        str(tiny_dataset),
        "--steps",
        "40",
        "--save-every",
        "2",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
        "--no-progress",
    ]
    ref = tmp_path / "reference"
    subprocess.run(
        [sys.executable, "-m", "apt_training.stage1", *args, "--out-dir", str(ref)],
        check=True,
        capture_output=True,
        timeout=240,
    )

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "apt_training.stage1", *args, "--out-dir", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pointer = run / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 4:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert killed_at < 40, "the run finished before it could be killed; the test proves nothing"
    assert not (run / "final").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "apt_training.stage1", *args, "--out-dir", str(run)],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert f"resuming from {run / 'checkpoints'}" in resumed.stdout
    a, b = losses(ref), losses(run)
    assert sorted(b) == list(range(1, 41))
    after = [s for s in range(killed_at + 1, 41)]
    assert [b[s] for s in after] == pytest.approx([a[s] for s in after], rel=1e-5, abs=1e-7)
    assert (run / "final" / "meta.json").exists()


def _stage1_and_stage2_config(dataset: Path, tmp_path: Path, s1_steps: int, **stage2):
    """A trained stage-1 run (tmp_path/s1) and a 3-step stage-2 config expanding it (tmp_path/s2)."""
    s1 = stage1.main(
        train_preset("debug", dataset=str(dataset), out_dir=str(tmp_path / "s1"), steps=s1_steps, **FAST)
    )
    cfg2 = train_preset(
        "debug",
        dataset=str(dataset),
        out_dir=str(tmp_path / "s2"),
        steps=3,
        stage=2,
        init_from=str(s1),
        **stage2,
        **FAST,
    )
    return s1, cfg2


def test_stage2_expands_stage1_and_baselines_train_from_scratch(tiny_dataset, tmp_path):
    _, cfg2 = _stage1_and_stage2_config(tiny_dataset, tmp_path, 3)
    final = stage2.main(cfg2)
    policy, _, meta = load_checkpoint(final, expect={"stage": 2})
    assert meta["variant"] == "apt" and policy.cfg.language_visible

    with pytest.raises(ValueError, match="starts from a stage-1 checkpoint"):
        stage2.main(cfg2.replace(init_from=""))
    base = stage2.main(cfg2.replace(variant="single_stage", init_from="", out_dir=str(tmp_path / "single")))
    _, _, meta = load_checkpoint(base, expect={"stage": 2})
    assert meta["variant"] == "single_stage"

    # --n-action-history: stage 1 without history tokens; stage 2 keeps its stage-1 architecture
    s1h = stage1.main(
        train_preset(
            "debug",
            dataset=str(tiny_dataset),
            out_dir=str(tmp_path / "s1h"),
            steps=2,
            n_action_history=0,
            **FAST,
        )
    )
    s2h = stage2.main(cfg2.replace(init_from=str(s1h), out_dir=str(tmp_path / "s2h"), steps=2))
    for ck in (s1h, s2h):
        policy, _, _ = load_checkpoint(ck)
        assert policy.cfg.n_action_history == 0 and policy.expert.n_hist == 0
    assert load_checkpoint(final)[0].cfg.n_action_history == 2  # the preset's default


def test_action_clip_bounds_the_targets_and_only_those(tiny_dataset, tmp_path):
    """--action-clip: normalized action targets beyond +-clip are clipped before the loss (a joint
    nearly constant in a fine-tune's statistics otherwise makes one frame's loss thousands of times
    the rest); the first step's loss changes with it, nothing else in the batch does."""
    batch = {"actions": torch.tensor([[[0.5, -800.0, 12.0]]]), "state": torch.tensor([[40.0]])}
    out = clip_action_targets({k: v.clone() for k, v in batch.items()}, 10.0)
    assert out["actions"].tolist() == [[[0.5, -10.0, 10.0]]] and out["state"].tolist() == [[40.0]]
    assert clip_action_targets({k: v.clone() for k, v in batch.items()}, 0.0)["actions"].tolist() == [
        [[0.5, -800.0, 12.0]]
    ]
    _, cfg = _stage1_and_stage2_config(tiny_dataset, tmp_path, 1)
    stage2.main(cfg.replace(steps=1))
    stage2.main(cfg.replace(steps=1, action_clip=0.05, out_dir=str(tmp_path / "clipped")))
    plain, clipped = losses(tmp_path / "s2")[1], losses(tmp_path / "clipped")[1]
    assert clipped < plain  # targets squeezed to +-0.05: the same noise lands nearer them
    with pytest.raises(TrainConfigError, match=r"holds another run \(action_clip: 0.05 there, 1.0 now"):
        train_or_reuse(cfg.replace(steps=1, action_clip=1.0, out_dir=str(tmp_path / "clipped")))
    with pytest.raises(TrainConfigError, match="action_clip must be >= 0 \\(0 disables\\), got -1"):
        cfg.replace(action_clip=-1.0)


def test_stage2_with_the_grounding_loss(tiny_dataset, tmp_path, capsys):
    """--goal-weight: targets from forward kinematics of the recorded joints, a goal head started at
    their mean, the loss logged, the head saved; stage 1 refuses it and it defines the run."""
    _, cfg = _stage1_and_stage2_config(tiny_dataset, tmp_path, 2, goal_weight=0.5)
    final = stage2.main(cfg)
    assert "gripper events in 3 episodes" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["goal_loss"] > 0 and 0 < r["goal_err_cm"] < 100 and r["goal_frac"] == 1.0 for r in rows)
    policy, _, _ = load_checkpoint(final, expect={"stage": 2})
    assert policy.cfg.goal_dim == 3 and policy.goal_head[-1].bias.abs().sum() > 0  # the mean target
    # from scratch too (the single-stage baseline), and the weight is part of the run's identity
    scratch = stage2.main(cfg.replace(variant="single_stage", init_from="", out_dir=str(tmp_path / "ss")))
    assert load_checkpoint(scratch)[0].cfg.goal_dim == 3
    with pytest.raises(TrainConfigError, match=r"holds another run \(goal_weight: 0.5 there, 1.0 now"):
        train_or_reuse(cfg.replace(goal_weight=1.0))
    with pytest.raises(TrainConfigError, match="goal_weight trains a grounding target"):
        train_preset("debug", dataset=str(tiny_dataset), goal_weight=1.0)
    with pytest.raises(TrainConfigError, match="goal_weight must be >= 0"):
        cfg.replace(goal_weight=-1.0)
    # --goal-input: the expanded policy gains the (zero-started) goal input and trains it
    gi = stage2.main(cfg.replace(goal_input=True, out_dir=str(tmp_path / "gi")))
    policy, _, _ = load_checkpoint(gi, expect={"stage": 2})
    assert policy.cfg.goal_input and policy.expert.goal_in.weight.abs().sum() > 0
    with pytest.raises(TrainConfigError, match="goal_input feeds the goal head's prediction"):
        cfg.replace(goal_weight=0.0, goal_input=True)
    # --goal-pointer: a goal pointer, started at the mean target like the head, trained and saved
    gp = stage2.main(cfg.replace(goal_input=True, goal_pointer=True, out_dir=str(tmp_path / "gp")))
    rows = [json.loads(x) for x in (tmp_path / "gp" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["pointer_loss"] > 0 and 0 < r["pointer_err_cm"] < 100 for r in rows)
    policy, _, _ = load_checkpoint(gp, expect={"stage": 2})
    assert policy.cfg.goal_pointer and policy.goal_pointer.head[-1].bias.abs().sum() > 0
    assert policy.cfg.goal_pointer_state == ("gripper",)  # the contract's gripper joint: the phase only
    with pytest.raises(TrainConfigError, match="goal_pointer supplies the goal input"):
        cfg.replace(goal_pointer=True)
    # --goal-noise: a share of the goals the actions see is moved (in the loss, so the run's losses
    # change from the second step on, the first step's goal input weights being zero); it defines
    # the run and needs the goal input
    gn = stage2.main(
        cfg.replace(goal_input=True, goal_pointer=True, goal_noise=0.05, out_dir=str(tmp_path / "gn"))
    )
    noisy = [json.loads(x) for x in (tmp_path / "gn" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in noisy] == [r["step"] for r in rows]
    assert noisy[-1]["loss"] != pytest.approx(rows[-1]["loss"], rel=1e-6)
    assert load_checkpoint(gn)[0].cfg.goal_pointer
    with pytest.raises(TrainConfigError, match=r"holds another run \(goal_noise: 0.05 there, 0.02 now"):
        train_or_reuse(
            cfg.replace(goal_input=True, goal_pointer=True, goal_noise=0.02, out_dir=str(tmp_path / "gn"))
        )
    with pytest.raises(TrainConfigError, match="goal_noise moves the goal the actions see"):
        cfg.replace(goal_noise=0.02)
    with pytest.raises(TrainConfigError, match=r"goal_noise_frac must be in \[0, 1\], got 1.5"):
        cfg.replace(goal_input=True, goal_noise=0.02, goal_noise_frac=1.5)


def test_frame_stride_observes_every_kth_frame_at_per_episode_offsets(tiny_dataset, tmp_path, capsys):
    """--frame-stride k: the loop draws only every k-th frame of each episode as an observation, at
    an offset that differs per episode (so every phase is trained on), keeps whole-episode action
    chunks, and the stride defines the run."""
    from apt_core.data.dataset import DemoDataset
    from apt_training.loop import Dist, iterate, observed_frames

    ds = DemoDataset(tiny_dataset)
    frames = observed_frames(ds, 3)
    ep, fr = ds.episode_index[frames], ds.frame_index[frames]
    assert ((fr - ep) % 3 == 0).all() and 0.3 < len(frames) / len(ds) < 0.37
    assert set(ep.tolist()) == set(ds.episode_index.tolist())  # every episode contributes
    assert {int(f % 3) for f in fr} == {0, 1, 2}  # and together they cover every phase
    assert len(observed_frames(ds, 1)) == len(ds)
    cfg = train_preset(
        "debug", dataset=str(tiny_dataset), out_dir=str(tmp_path / "s"), steps=2, frame_stride=3, **FAST
    )
    data = iterate(ds, cfg, Dist(), 0, 0)
    drawn = [next(data)[2] for _ in range(len(frames) // cfg.batch_size)]  # one epoch
    pairs = {(int(e), int(f)) for b in drawn for e, f in zip(b["episode_index"], b["frame_index"])}
    assert all((f - e) % 3 == 0 for e, f in pairs) and len(pairs) == len(drawn) * cfg.batch_size
    assert all(b["action"].shape[1] == ds.chunk_length for b in drawn)
    stage1.main(cfg)
    assert f"({len(frames)} observed, frame stride 3)" in capsys.readouterr().out
    with pytest.raises(TrainConfigError, match=r"holds another run \(frame_stride: 3 there, 2 now"):
        train_or_reuse(cfg.replace(frame_stride=2))
    with pytest.raises(TrainConfigError, match="frame_stride must be >= 1"):
        cfg.replace(frame_stride=0)


def test_vision_token_overrides_reach_the_policy_config(tiny_dataset):
    from apt_core.data.dataset import DemoDataset
    from apt_training.loop import policy_config_for

    ds = DemoDataset(tiny_dataset)
    recipe = train_preset("cpu-demo", dataset=str(tiny_dataset))
    assert recipe.vision_tokens == "keypoints"  # the cpu-demo recipe's tokens (docs/model.md)
    assert policy_config_for(recipe, ds).backbone.vision_tokens == "keypoints"
    pooled = recipe.replace(vision_tokens="", vision_grid=8)
    assert policy_config_for(pooled, ds).backbone.vision_tokens == "pooled"  # the preset's
    assert policy_config_for(pooled, ds).backbone.vision_grid == 8
    assert policy_config_for(pooled.replace(vision_grid=0), ds).backbone.vision_grid == 4  # the preset's
    with pytest.raises(TrainConfigError, match="vision_grid must be >= 0"):
        recipe.replace(vision_grid=-1)
    with pytest.raises(TrainConfigError, match="vision_tokens 'cells' unknown"):
        recipe.replace(vision_tokens="cells")
    # grounded keypoints: stage 2 only; -1 keeps the preset's (none)
    assert policy_config_for(recipe.replace(stage=2), ds).backbone.grounded_keypoints == 0
    assert (
        policy_config_for(recipe.replace(stage=2, grounded_keypoints=4), ds).backbone.grounded_keypoints == 4
    )
    with pytest.raises(TrainConfigError, match="stage-2 option"):
        recipe.replace(grounded_keypoints=4)  # the recipe's stage is 1
    with pytest.raises(TrainConfigError, match="grounded_keypoints must be >= -1"):
        recipe.replace(stage=2, grounded_keypoints=-2)


def test_finetune_from_goes_on_training_a_stage2_policy(tiny_dataset, tmp_path, capsys):
    """--finetune-from: the stage-2 policy's weights and normalisation are where training starts
    (with a zero learning rate it comes out unchanged), its goal settings must be asked for again,
    and a stage-1 checkpoint or both starting points at once are refused. Push-contact goal targets
    (--goal-push-travel) ride along: a fine-tune may use other targets than the run it continues."""
    import torch

    _, cfg = _stage1_and_stage2_config(
        tiny_dataset, tmp_path, 2, goal_weight=0.5, goal_input=True, goal_pointer=True
    )
    base = stage2.main(cfg)
    src, src_proc, _ = load_checkpoint(base, expect={"stage": 2})
    ft = cfg.replace(init_from="", finetune_from=str(base), goal_push_travel=0.03, steps=2)
    frozen = stage2.main(ft.replace(lr=1e-30, out_dir=str(tmp_path / "ft0")))
    out, proc, meta = load_checkpoint(frozen, expect={"stage": 2})
    a, b = src.state_dict(), out.state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-20) for k in a)
    assert proc.stats == src_proc.stats and meta["stage"] == 2
    assert json.loads((tmp_path / "ft0" / "train_config.json").read_text())["finetune_from"] == str(base)
    trained = stage2.main(ft.replace(out_dir=str(tmp_path / "ft1")))
    c = load_checkpoint(trained)[0].state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dtype.is_floating_point)
    # the goal flags must match the policy's
    with pytest.raises(ValueError, match=r"other goal settings than this config \(goal_pointer: True there"):
        stage2.main(ft.replace(goal_pointer=False, out_dir=str(tmp_path / "ft2")))
    with pytest.raises(Exception, match="stage"):
        stage2.main(ft.replace(finetune_from=str(tmp_path / "s1" / "final"), out_dir=str(tmp_path / "ft3")))
    with pytest.raises(TrainConfigError, match="exclude each other"):
        cfg.replace(finetune_from=str(base))
    with pytest.raises(TrainConfigError, match="goal_push_travel changes the goal targets"):
        train_preset("debug", stage=2, goal_push_travel=0.03)
    with pytest.raises(TrainConfigError, match="goal_push_travel must be >= 0"):
        ft.replace(goal_push_travel=-0.01)
    with pytest.raises(TrainConfigError, match="goal_push_end changes the goal targets"):
        train_preset("debug", stage=2, goal_push_end=0.05)
    with pytest.raises(TrainConfigError, match="goal_push_end must be >= 0"):
        ft.replace(goal_push_end=-0.01)


def test_train_only_the_goal_pointer_keeps_every_other_weight_and_resumes(tiny_dataset, tmp_path):
    """--train-only goal_pointer: only the pointer's weights change, its loss is the run's loss, a
    run stopped at step 2 and resumed to 4 gives the uninterrupted run's losses and weights, and the
    option is refused by name where it cannot apply."""
    import torch

    _, cfg = _stage1_and_stage2_config(
        tiny_dataset, tmp_path, 2, goal_weight=0.5, goal_input=True, goal_pointer=True
    )
    base = stage2.main(cfg)
    src = load_checkpoint(base)[0].state_dict()
    ft = cfg.replace(init_from="", finetune_from=str(base), train_only="goal_pointer", steps=4, save_every=2)
    whole = stage2.main(ft.replace(out_dir=str(tmp_path / "whole")))
    stage2.main(ft.replace(steps=2, out_dir=str(tmp_path / "split")))
    split = stage2.main(ft.replace(out_dir=str(tmp_path / "split")))
    a, b = load_checkpoint(whole)[0].state_dict(), load_checkpoint(split)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "whole"), rel=1e-6)
    moved = {k for k in src if not torch.equal(src[k], a[k])}
    assert moved and all(k.startswith("goal_pointer.") for k in moved)
    rows = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["pointer_loss"] and 0 < r["pointer_err_cm"] < 100 for r in rows)
    # the option defines the run, and it needs a goal-pointer policy to go on training
    with pytest.raises(
        TrainConfigError, match=r"holds another run \(train_only: 'goal_pointer' there, '' now"
    ):
        train_or_reuse(ft.replace(train_only="", out_dir=str(tmp_path / "whole")))
    with pytest.raises(TrainConfigError, match="train_only goal_pointer trains the goal pointer"):
        cfg.replace(train_only="goal_pointer")
    with pytest.raises(TrainConfigError, match="train_only 'expert' unknown"):
        ft.replace(train_only="expert")


def test_finetune_with_more_keypoints_and_the_pointer_readout_widens_the_policy(tiny_dataset, tmp_path):
    """--keypoints N on --finetune-from a keypoint policy with fewer: the run starts from the same
    policy with N keypoint tokens (its own kept, with a zero learning rate unchanged), the count
    defines the run, and taking keypoints away is refused by name. --goal-pointer-coords and
    --goal-pointer-pixels on a pointer policy without those readouts add them (fresh); they too
    define the run."""
    import torch

    cfg = train_preset(
        "cpu-demo",
        dataset=str(tiny_dataset),
        out_dir=str(tmp_path / "base"),
        stage=2,
        variant="single_stage",  # stage 2 from scratch: a keypoint policy to fine-tune
        keypoints=8,
        steps=1,
        goal_weight=0.5,
        goal_input=True,
        goal_pointer=True,
    ).replace(**{**FAST, "batch_size": 2})
    base = stage2.main(cfg)
    src = load_checkpoint(base)[0]
    assert src.cfg.backbone.keypoints == 8
    ft = cfg.replace(
        finetune_from=str(base),
        keypoints=12,
        goal_pointer_coords=True,
        goal_pointer_pixels=True,
        lr=1e-30,
        out_dir=str(tmp_path / "ft"),
    )
    out = load_checkpoint(stage2.main(ft))[0]
    assert out.cfg.backbone.keypoints == 12 and out.backbone.n_vis == 12
    assert out.cfg.goal_pointer_coords and not src.cfg.goal_pointer_coords
    assert out.cfg.goal_pointer_pixels and not src.cfg.goal_pointer_pixels
    a, b = src.state_dict(), out.state_dict()
    new = {k for k in b if k not in a}
    assert new == {k for k in b if k.startswith(("goal_pointer.coord.", "goal_pointer.pix_"))}
    assert any(k.startswith("goal_pointer.coord.") for k in new)
    assert any(k.startswith("goal_pointer.pix_") for k in new)
    for k in a:
        if k.startswith("backbone.neck.kp.") or k == "backbone.neck.pos":
            torch.testing.assert_close(b[k][:8], a[k], rtol=0, atol=1e-20)
            assert b[k].shape[0] == 12, k
        else:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-20)
    with pytest.raises(TrainConfigError, match=r"holds another run \(keypoints: 12 there, 16 now"):
        train_or_reuse(ft.replace(keypoints=16))
    with pytest.raises(
        TrainConfigError,
        match=r"keypoints 4: \S+: widen_keypoints adds keypoints .* has 8 per camera and tap, asked for 4",
    ):
        stage2.main(ft.replace(keypoints=4, out_dir=str(tmp_path / "ft2")))
    with pytest.raises(TrainConfigError, match="keypoints must be >= 0"):
        ft.replace(keypoints=-1)
    with pytest.raises(
        TrainConfigError, match=r"holds another run \(goal_pointer_coords: True there, False now"
    ):
        train_or_reuse(ft.replace(goal_pointer_coords=False))
    with pytest.raises(TrainConfigError, match="goal_pointer_coords is a readout of the goal pointer"):
        ft.replace(goal_pointer=False, goal_pointer_coords=True, goal_pointer_pixels=False)
    with pytest.raises(
        TrainConfigError, match=r"holds another run \(goal_source: 'state' there, 'action' now"
    ):
        train_or_reuse(ft.replace(goal_source="action"))
    with pytest.raises(
        TrainConfigError, match=r"holds another run \(goal_pointer_pixels: True there, False now"
    ):
        train_or_reuse(ft.replace(goal_pointer_pixels=False))
    with pytest.raises(TrainConfigError, match="goal_pointer_pixels is a readout of the goal pointer"):
        ft.replace(goal_pointer=False, goal_pointer_coords=False, goal_pointer_pixels=True)


def test_bad_training_configs_name_the_field(tiny_dataset):
    with pytest.raises(TrainConfigError, match="steps must be >= 1"):
        train_preset("debug", dataset=str(tiny_dataset), steps=0)
    with pytest.raises(TrainConfigError, match="n_action_history must be >= -1"):
        train_preset("debug", dataset=str(tiny_dataset), n_action_history=-2)
    with pytest.raises(TrainConfigError, match="unknown training preset 'nope'"):
        train_preset("nope")
    with pytest.raises(TrainConfigError, match="init_from is only used by stage 2"):
        train_preset("debug", init_from="x")
    with pytest.raises(TrainConfigError, match="goal_source must be 'state' .* or 'action' .*, got 'ee'"):
        train_preset("debug", goal_source="ee")


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(tiny_dataset, tmp_path):
    """torchrun with 2 processes on the gloo backend: both ranks end with identical weights."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "apt_training.stage1",
            "--recipe",
            "debug",
            "--dataset",
            str(tiny_dataset),
            "--out-dir",
            str(out),
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--no-progress",
            "--log-every",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ddp: parameters identical across 2 processes" in proc.stdout
    assert "2 process(es)" in proc.stdout
    _, _, meta = load_checkpoint(out / "final")
    assert meta["step"] == 4


def test_the_feature_memo_budget_is_half_the_available_memory_unless_given(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n")
    assert feature_cache_budget(0.0, 1, str(meminfo))[0] == 20000000 * 1024 // 2
    assert feature_cache_budget(0.0, 2, str(meminfo))[0] == 20000000 * 1024 // 4  # DDP: shared per process
    assert feature_cache_budget(3.5, 2, str(meminfo)) == (3_500_000_000, "cache_features_gb")
    nbytes, why = feature_cache_budget(0.0, 1, str(tmp_path / "missing"))
    assert nbytes == 16_000_000_000 and "unknown" in why
    with pytest.raises(TrainConfigError, match="cache_features_gb must be >= 0"):
        train_preset("debug", cache_features_gb=-1.0)
