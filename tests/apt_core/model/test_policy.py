"""APT policy invariants on the debug preset (tiny random backbone, runs in seconds)."""

from __future__ import annotations

import pytest
import torch

from apt_core.model.config import get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor

from .conftest import make_raw_batch


def _setup(stats: dict, **overrides):
    cfg = get_preset("debug", **overrides)
    torch.manual_seed(0)
    return APTPolicy(cfg), Processor.from_stats(cfg, stats)


def _sample(policy, proc, raw, seed=1):
    batch = proc.process_batch(raw)
    noise = torch.randn(
        (len(raw["task"]), policy.cfg.chunk_length, policy.cfg.action_dim),
        generator=torch.Generator().manual_seed(seed),
    )
    return policy.sample_actions(batch, noise=noise)


@pytest.mark.parametrize("style", ["pi", "gr00t"])
def test_stage1_actions_ignore_the_instruction_stage2_do_not(stats, style):
    raw_a = make_raw_batch(3, tasks=["pick up the red cube", "stack", "push the blue block left"])
    raw_b = dict(raw_a, task=["put the green cube in the bowl", "open the drawer now please", "x"])
    p1, proc1 = _setup(stats, expert={"style": style})
    a1, b1 = _sample(p1, proc1, raw_a), _sample(p1, proc1, raw_b)
    assert torch.equal(a1, b1), "stage-1 actions changed with the instruction"
    p2, proc2 = _setup(stats, stage=2, expert={"style": style})
    a2, b2 = _sample(p2, proc2, raw_a), _sample(p2, proc2, raw_b)
    assert (a2 - b2).abs().max() > 1e-4, "stage-2 actions must depend on the instruction"


def test_token_insertion_sees_language_and_stage1_masks_vision_too_little(stats):
    raw_a = make_raw_batch(2, tasks=["pick up the red cube", "stack"])
    raw_b = dict(raw_a, task=["open the drawer", "push left"])
    p, proc = _setup(stats, stage=2, variant="token_insertion")
    assert (_sample(p, proc, raw_a) - _sample(p, proc, raw_b)).abs().max() > 1e-4
    # vision still reaches a stage-1 model: another image changes the actions
    p1, proc1 = _setup(stats)
    raw_c = dict(raw_a, **{"observation.images.front": 255 - raw_a["observation.images.front"]})
    assert (_sample(p1, proc1, raw_a) - _sample(p1, proc1, raw_c)).abs().max() > 1e-4


@pytest.mark.parametrize("objective", ["ddim", "flow"])
@pytest.mark.parametrize("style", ["pi", "gr00t"])
@pytest.mark.parametrize("stage", [1, 2])
def test_objectives_and_styles_sample_right_shape(stats, objective, style, stage):
    p, proc = _setup(stats, stage=stage, expert={"style": style}, objective={"kind": objective})
    raw = make_raw_batch(2)
    loss, info = p.compute_loss(proc.process_batch(raw, train=True))
    assert loss.ndim == 0 and torch.isfinite(loss) and info["loss"] > 0
    out = p.sample_actions(proc.process_batch(raw), num_steps=3)
    assert out.shape == (2, 16, 7) and torch.isfinite(out).all()


def test_stage1_has_half_the_layers_fed_by_odd_taps(stats):
    p1, _ = _setup(stats)
    p2, _ = _setup(stats, stage=2)
    assert len(p2.expert.layers) == p2.backbone.num_taps == 4
    assert len(p1.expert.layers) == 2 and p1.layer_taps == [1, 3] and p2.layer_taps == [0, 1, 2, 3]


def test_gate_types(stats):
    pv, _ = _setup(stats, stage=2)
    ps, _ = _setup(stats, stage=2, expert={"gate": "scalar"})
    assert pv.expert.layers[0].gate.logit.shape == (64,)
    assert ps.expert.layers[0].gate.logit.shape == (1,)
    assert torch.allclose(pv.expert.layers[0].gate(), torch.full((64,), 0.5))


def _grads(policy, proc, raw):
    policy.zero_grad(set_to_none=True)
    loss, _ = policy.compute_loss(proc.process_batch(raw, train=True))
    loss.backward()
    bb = [p for p in policy.backbone.parameters()]
    return bb, [p for p in policy.expert.parameters()]


def test_frozen_backbone_gets_no_gradient_full_does(stats):
    raw = make_raw_batch(2)
    p, proc = _setup(stats, stage=2, backbone={"mode": "frozen"})
    bb, ex = _grads(p, proc, raw)
    assert all(x.grad is None for x in bb) and not any(x.requires_grad for x in bb)
    assert sum(float(x.grad.abs().sum()) for x in ex if x.grad is not None) > 0
    p, proc = _setup(stats, stage=2, backbone={"mode": "full"})
    bb, _ = _grads(p, proc, raw)
    assert sum(float(x.grad.abs().sum()) for x in bb if x.grad is not None) > 0
    # stage 1 forces a frozen backbone whatever backbone.mode says
    p, proc = _setup(stats, stage=1, backbone={"mode": "full"})
    bb, _ = _grads(p, proc, raw)
    assert all(x.grad is None for x in bb)


def test_knowledge_insulation_blocks_gradient_into_backbone(stats):
    raw = make_raw_batch(2)
    p, proc = _setup(stats, stage=2, variant="knowledge_insulation", backbone={"mode": "full"})
    # nothing trains the insulated encoder here (no second objective), so its weights are fixed
    # in every mode, LoRA included (apply_backbone_mode)
    assert not any(x.requires_grad for x in p.backbone.parameters())
    for x in p.backbone.parameters():  # made trainable anyway, it is still insulated
        x.requires_grad_(True)
    bb, ex = _grads(p, proc, raw)
    assert all(x.grad is None or float(x.grad.abs().sum()) == 0 for x in bb)
    assert sum(float(x.grad.abs().sum()) for x in ex if x.grad is not None) > 0
    lora, _ = _setup(
        stats, stage=2, variant="knowledge_insulation", backbone={"mode": "lora", "lora_rank": 4}
    )
    named = dict(lora.backbone.named_parameters())
    assert any("lora_" in n for n in named) and not any(x.requires_grad for x in named.values())
    assert lora.num_parameters(trainable_only=True) == sum(x.numel() for x in lora.expert.parameters())


def test_lora_trains_only_adapters(stats):
    raw = make_raw_batch(2)
    p, proc = _setup(stats, stage=2, backbone={"mode": "lora", "lora_rank": 4})
    _grads(p, proc, raw)
    named = dict(p.backbone.named_parameters())
    lora = {n: x for n, x in named.items() if "lora_" in n}
    assert lora and all(x.requires_grad for x in lora.values())
    assert all(x.grad is None for n, x in named.items() if "lora_" not in n)
    assert sum(float(x.grad.abs().sum()) for n, x in lora.items() if n.endswith("lora_B")) > 0


def test_padded_steps_do_not_count(stats):
    # padded steps still enter the expert (as in LeRobot, they repeat the last action), but their
    # error must not: a head hook makes the prediction wrong only at padded steps
    p, proc = _setup(stats, stage=2)
    raw = make_raw_batch(2)
    raw["action_is_pad"][:, 8:] = True
    b = proc.process_batch(raw)
    l1, _ = p.compute_loss(b, generator=torch.Generator().manual_seed(3))

    def corrupt(_mod, _inp, out):
        out = out.clone()
        out[:, 8:] += 100.0
        return out

    h = p.expert.head.register_forward_hook(corrupt)
    l2, _ = p.compute_loss(b, generator=torch.Generator().manual_seed(3))
    b["action_is_pad"][:] = False
    l3, _ = p.compute_loss(b, generator=torch.Generator().manual_seed(3))
    h.remove()
    assert torch.allclose(l1, l2)
    assert l3 > 100 * l1


def test_tiny_model_overfits_a_small_batch(stats):
    p, proc = _setup(stats, stage=2, objective={"kind": "flow"})
    b = proc.process_batch(make_raw_batch(4))
    opt = torch.optim.AdamW([x for x in p.parameters() if x.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        loss, _ = p.compute_loss(b, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first / 10, f"loss fell only from {first:.3f} to {last:.3f}"
    # the sampler turns the fitted model back into the training chunks (not just a low loss)
    p.eval()
    a = p.sample_actions(b, generator=torch.Generator().manual_seed(1))
    err = (a - b["actions"]).abs().mean()
    spread = (b["actions"] - b["actions"].mean(0)).abs().mean()
    assert err < 0.4 * spread, f"sampled chunks miss the targets: error {err:.3f} vs spread {spread:.3f}"


def test_bad_batches_name_the_problem(stats):
    p, proc = _setup(stats)
    b = proc.process_batch(make_raw_batch(2))
    del b["images"]
    with pytest.raises(KeyError, match="images"):
        p.sample_actions(b)
    b = proc.process_batch(make_raw_batch(2))
    with pytest.raises(ValueError, match="noise has shape"):
        p.sample_actions(b, noise=torch.zeros(2, 5, 7))
