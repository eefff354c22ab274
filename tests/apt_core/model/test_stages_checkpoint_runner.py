"""Expansion, checkpoints (safetensors + JSON, mismatch errors) and the ChunkPolicy runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apt_core.model.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    save_checkpoint,
)
from apt_core.model.config import get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor
from apt_core.model.runner import load_runner
from apt_core.model.stages import ExpansionError, expand_to_stage2, va_layer_indices
from apt_core.types import Observation

from .conftest import make_raw_batch


def _policy(stats, **kw):
    cfg = get_preset("debug", **kw)
    return APTPolicy(cfg), Processor.from_stats(cfg, stats)


def _perturb(p):
    with torch.no_grad():  # move away from init so copies are distinguishable from fresh layers
        for x in p.expert.parameters():
            x.add_(torch.randn_like(x) * 0.05)


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_expansion_carries_stage1_layers_exactly(stats, mode):
    p1, _ = _policy(stats)
    _perturb(p1)
    p2 = expand_to_stage2(p1, p1.cfg.replace(stage=2, backbone={"mode": mode}))
    assert len(p2.expert.layers) == 2 * len(p1.expert.layers)
    for i, j in enumerate(va_layer_indices(len(p1.expert.layers))):
        s1, s2 = p1.expert.layers[i].state_dict(), p2.expert.layers[j].state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    for j in range(0, len(p2.expert.layers), 2):  # new language layers are fresh, not copies
        assert not torch.equal(p2.expert.layers[j].qkv.weight, p1.expert.layers[j // 2].qkv.weight)
    for k, v in p1.expert.state_dict().items():
        if not k.startswith("layers."):
            assert torch.equal(v, p2.expert.state_dict()[k]), k
    bb2 = p2.backbone.state_dict()
    for k, v in p1.backbone.state_dict().items():
        assert torch.equal(v, bb2[k]), k
    trainable_bb = [n for n, x in p2.backbone.named_parameters() if x.requires_grad]
    if mode == "frozen":
        assert trainable_bb == []
    elif mode == "lora":
        assert trainable_bb and all("lora_" in n for n in trainable_bb)
    else:
        assert len(trainable_bb) == len(list(p2.backbone.parameters()))


def test_expansion_rejects_misfits(stats):
    p1, _ = _policy(stats)
    with pytest.raises(ExpansionError, match="chunk_length"):
        expand_to_stage2(p1, p1.cfg.replace(stage=2, chunk_length=8))
    with pytest.raises(ExpansionError, match="expert.width"):
        expand_to_stage2(p1, p1.cfg.replace(stage=2, expert={"width": 32}))
    with pytest.raises(ExpansionError, match="stage"):
        expand_to_stage2(p1, p1.cfg)


@pytest.mark.parametrize("stage", [1, 2])
def test_save_load_gives_identical_actions(stats, tmp_path, stage):
    p, proc = _policy(stats, stage=stage)
    _perturb(p)
    raw = make_raw_batch(2)
    noise = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(5))
    ref = p.eval().sample_actions(proc.process_batch(raw), noise=noise)
    out = save_checkpoint(tmp_path / "ck", p, proc, {"step": 123})
    assert sorted(x.name for x in out.iterdir()) == [
        "config.json",
        "meta.json",
        "model.safetensors",
        "processor.json",
    ]
    p2, proc2, meta = load_checkpoint(out)
    assert (
        meta["step"] == 123
        and meta["stage"] == stage
        and meta["chunk_length"] == 16
        and meta["rate_hz"] == 10.0
    )
    got = p2.sample_actions(proc2.process_batch(raw), noise=noise)
    assert torch.equal(ref, got)
    # overwriting in place keeps a valid checkpoint and leaves no temporary directories behind
    save_checkpoint(out, p, proc, {"step": 124})
    assert load_checkpoint(out)[2]["step"] == 124
    assert [x.name for x in tmp_path.iterdir()] == ["ck"]


def test_checkpoint_mismatch_is_named(stats, tmp_path):
    p, proc = _policy(stats)
    ck = save_checkpoint(tmp_path / "ck", p, proc, {})
    with pytest.raises(CheckpointMismatchError, match="joint_names"):
        load_checkpoint(ck, expect={"joint_names": ["a", "b", "c", "d", "e", "f", "g"]})
    with pytest.raises(CheckpointMismatchError, match="stage: checkpoint has 1, expected 2"):
        load_checkpoint(ck, expect={"stage": 2})
    load_checkpoint(ck, expect={"stage": 1, "joint_names": list(p.cfg.joint_names), "rate_hz": 10})
    # weights that do not fit the config (another chunk length) are refused with the key named
    cfg = json.loads((ck / "config.json").read_text())
    cfg["chunk_length"] = 8
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="expert.pos"):
        load_checkpoint(ck)
    (ck / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(ck)


def test_checkpoint_holds_no_pickle(stats, tmp_path):
    p, proc = _policy(stats)
    ck = save_checkpoint(tmp_path / "ck", p, proc, {})
    for f in ck.iterdir():
        head = f.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK", f"{f.name} looks like a pickle/zip"


def _obs(q, seed=0):
    rng = np.random.default_rng(seed)
    return Observation(
        images={"front": rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)}, joint_positions=q, stamp=1.0
    )


@pytest.mark.parametrize("space", ["joint_position", "joint_delta"])
def test_runner_predicts_absolute_targets(stats, tmp_path, space):
    p, proc = _policy(stats, action_space=space)
    ck = save_checkpoint(tmp_path / "ck", p, proc, {})
    r = load_runner(ck, seed=3)
    assert r.joint_names == p.cfg.joint_names and r.chunk_length == 16 and r.rate_hz == 10.0
    q = np.linspace(-0.5, 0.5, 7)
    a = r.predict(_obs(q), "pick up the red cube")
    assert a.shape == (16, 7) and a.dtype == np.float64 and np.isfinite(a).all()
    assert r.last_latency_s > 0
    r.reset()
    assert np.array_equal(a, r.predict(_obs(q), "pick up the red cube"))  # reset -> same noise
    if space == "joint_delta":
        # deltas are added to the current state: shifting the state shifts the normalised input
        # too, so compare against the model output directly
        batch = proc.process_observation(_obs(q), "pick up the red cube")
        r.reset()
        noise = torch.randn((1, 16, 7), generator=torch.Generator().manual_seed(3))
        d = proc.unnormalize_actions(r.policy.sample_actions(batch, noise=noise))[0].double().numpy()
        assert np.allclose(r.predict(_obs(q), "pick up the red cube"), d + q, atol=1e-5)


def test_runner_noise_scale_is_a_sampling_temperature(stats, tmp_path):
    """noise_scale 0 samples every chunk from the zero noise: the seed no longer matters; 1 (the
    default) samples the seeded noise; a negative or non-finite scale is refused."""
    p, proc = _policy(stats)
    _perturb(p)
    ck = save_checkpoint(tmp_path / "ck", p, proc, {})
    q = np.linspace(-0.5, 0.5, 7)
    cold = [load_runner(ck, seed=s, noise_scale=0.0) for s in (1, 2)]
    a0, a1 = (r.predict(_obs(q), "pick up the red cube") for r in cold)
    assert np.array_equal(a0, a1)
    batch = proc.process_observation(_obs(q), "pick up the red cube")
    with torch.no_grad():
        zero = cold[0].policy.sample_actions(batch, noise=torch.zeros(1, 16, 7))
    assert np.allclose(a0, proc.unnormalize_actions(zero)[0].double().numpy(), atol=1e-5)
    w0, w1 = (load_runner(ck, seed=s).predict(_obs(q), "pick up the red cube") for s in (1, 2))
    assert not np.allclose(w0, w1) and not np.allclose(w0, a0)
    half = load_runner(ck, seed=1, noise_scale=0.5).predict(_obs(q), "pick up the red cube")
    assert not np.allclose(half, w0) and not np.allclose(half, a0)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
            load_runner(ck, noise_scale=bad)


def test_runner_uses_action_history_from_extras(stats, tmp_path):
    p, proc = _policy(stats)
    _perturb(p)
    r = load_runner(save_checkpoint(tmp_path / "ck", p, proc, {}))
    q = np.zeros(7)
    a = r.predict(_obs(q), "x")
    r.reset()
    o = _obs(q)
    o.extras["action_history"] = np.ones((2, 7))
    assert not np.allclose(a, r.predict(o, "x"))
    o.extras["action_history"] = np.ones((3, 7))
    with pytest.raises(ValueError, match="action_history"):
        r.predict(o, "x")


def test_runner_rejects_bad_observations_and_ee_pose(stats, tmp_path):
    p, proc = _policy(stats)
    r = load_runner(save_checkpoint(tmp_path / "ck", p, proc, {}))
    with pytest.raises(ValueError, match="joint_positions"):
        r.predict(_obs(np.zeros(6)), "x")
    with pytest.raises(ValueError, match="front"):
        r.predict(
            Observation(images={"wrist": np.zeros((8, 8, 3), np.uint8)}, joint_positions=np.zeros(7)), "x"
        )
    with pytest.raises(ValueError, match="uint8"):
        r.predict(Observation(images={"front": np.zeros((8, 8, 3))}, joint_positions=np.zeros(7)), "x")
    stats_ee = {
        "observation.state": stats["observation.state"],
        "action": {k: [0.0] * 10 if k != "std" else [1.0] * 10 for k in stats["action"]},
    }
    pe, proce = _policy(stats_ee, action_space="ee_pose", action_dim=10)
    re = load_runner(save_checkpoint(tmp_path / "ee", pe, proce, {}))
    with pytest.raises(NotImplementedError, match="IK"):
        re.predict(_obs(np.zeros(7)), "x")


def test_stage2_from_a_stage1_checkpoint(stats, tmp_path):
    from apt_core.model.stages import stage2_from_checkpoint

    p1, proc = _policy(stats)
    _perturb(p1)
    ck = save_checkpoint(tmp_path / "s1", p1, proc, {"step": 10})
    p2, proc2, meta = stage2_from_checkpoint(ck, backbone={"mode": "lora", "lora_rank": 2})
    assert meta["stage"] == 1 and p2.cfg.stage == 2 and p2.cfg.backbone_mode == "lora"
    assert torch.equal(p2.expert.layers[3].qkv.weight, p1.expert.layers[1].qkv.weight)
    raw = make_raw_batch(2)
    assert torch.equal(proc2.process_batch(raw)["actions"], proc.process_batch(raw)["actions"])
    p2b, *_ = load_checkpoint(save_checkpoint(tmp_path / "s2", p2, proc2, {}), expect={"stage": 2})
    with pytest.raises(CheckpointMismatchError, match="stage"):
        stage2_from_checkpoint(tmp_path / "s2")
