"""The auxiliary grounding head (PolicyConfig.goal_dim): a training signal that leaves sampling alone,
reaches the expert, and can only be fitted by reading the instruction."""

from __future__ import annotations

import pytest
import torch

from apt_core.model.config import ConfigError, get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor

from .conftest import make_raw_batch

torch.set_num_threads(1)


def _policy(stats, **overrides) -> tuple[APTPolicy, Processor]:
    cfg = get_preset("debug", stage=2, **overrides)
    torch.manual_seed(0)
    return APTPolicy(cfg), Processor.from_stats(cfg, stats)


def _with_goals(raw: dict, goals: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
    return dict(
        raw, goal=goals, goal_valid=torch.ones(len(goals), dtype=torch.bool) if valid is None else valid
    )


def _one_scene(raw: dict) -> dict:
    """raw with every sample's image and state replaced by the first sample's."""
    for k in ("observation.images.front", "observation.state"):
        raw[k] = raw[k][:1].expand(len(raw[k]), *raw[k].shape[1:]).clone()
    return raw


def _fit(p: APTPolicy, batch: dict, steps: int, goal_weight: float) -> dict[str, float]:
    """Adam (lr 3e-3) on p's trainable parameters for `steps` steps; returns the last info."""
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss, info = p.compute_loss(batch, generator=g, goal_weight=goal_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return info


def test_goal_loss_adds_to_the_action_loss_and_sampling_ignores_the_head(stats) -> None:
    plain, proc = _policy(stats)
    p, _ = _policy(stats, goal_dim=3)
    missing, unexpected = p.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("goal_head.") for k in missing)
    raw = _with_goals(
        make_raw_batch(4), torch.tensor([[0.4, 0.1, 0.03]] * 4), torch.tensor([1, 1, 1, 0]).bool()
    )
    batch = proc.process_batch(raw, train=True)

    def loss(policy, w):
        return policy.compute_loss(batch, generator=torch.Generator().manual_seed(5), goal_weight=w)

    base, info0 = loss(plain, 1.0)  # no head: the goal is ignored
    same, _ = loss(p, 0.0)
    both, info = loss(p, 2.0)
    assert "goal_loss" not in info0 and torch.equal(base, same)
    assert info["goal_frac"] == 0.75 and info["goal_err_cm"] > 0
    assert both.item() == pytest.approx(base.item() + 2.0 * info["goal_loss"], rel=1e-6)
    # the masked sample does not count: changing its target leaves the loss unchanged
    raw2 = dict(raw, goal=raw["goal"].clone())
    raw2["goal"][3] = 5.0
    b2 = proc.process_batch(raw2, train=True)
    assert p.compute_loss(b2, generator=torch.Generator().manual_seed(5), goal_weight=2.0)[
        0
    ].item() == pytest.approx(both.item())
    # gradients reach the head and the expert's fusion of the backbone tokens
    p.zero_grad(set_to_none=True)
    both.backward()
    assert p.goal_head[-1].weight.grad.abs().sum() > 0
    assert p.expert.layers[0].ctx_proj.weight.grad.abs().sum() > 0
    # sampling never runs the head: the actions equal those of the same weights without one
    p.eval(), plain.eval()
    noise = torch.randn(4, 16, 7, generator=torch.Generator().manual_seed(1))
    served = proc.process_batch(make_raw_batch(4))
    assert torch.equal(p.sample_actions(served, noise=noise), plain.sample_actions(served, noise=noise))


def test_goal_head_learns_a_target_only_the_instruction_tells(stats) -> None:
    """Same image and state, two instructions, two targets 40 cm apart: the head can only fit both
    by reading the words (the mean of the two would be 20 cm off each)."""
    p, proc = _policy(stats, goal_dim=3)
    raw = _one_scene(make_raw_batch(8, tasks=["pick up the red cube", "pick up the blue cube"] * 4))
    goals = torch.tensor([[0.45, 0.2, 0.03], [0.45, -0.2, 0.03]] * 4)
    batch = proc.process_batch(_with_goals(raw, goals), train=True)
    info = _fit(p, batch, 150, goal_weight=1.0)
    p.eval()
    pred = p.predict_goal(proc.process_batch(raw))
    err = (pred - goals).norm(dim=-1)
    assert err.max() < 0.05, err
    assert info["goal_err_cm"] < 5


def test_goal_dim_is_checked_and_needed_for_predictions(stats) -> None:
    with pytest.raises(ConfigError, match="goal_dim must be 0"):
        get_preset("debug", goal_dim=2)
    p, proc = _policy(stats)
    with pytest.raises(ValueError, match="no goal head"):
        p.predict_goal(proc.process_batch(make_raw_batch(1)))
    with pytest.raises(Exception, match=r"goal / goal_valid have shapes \(2, 2\)"):
        proc.process_batch(_with_goals(make_raw_batch(2), torch.zeros(2, 2)))


def test_goal_input_is_teacher_forced_in_training_and_follows_the_head_when_sampling(stats) -> None:
    """PolicyConfig.goal_input: starts as a no-op; the loss reads the recorded goal (also where its
    loss target is masked); sampling feeds the goal head's own prediction to the action tokens."""
    plain, proc = _policy(stats, goal_dim=3)
    p, _ = _policy(stats, goal_dim=3, goal_input=True)
    missing, unexpected = p.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["expert.goal_in.bias", "expert.goal_in.weight"]
    p.eval(), plain.eval()
    noise = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(1))
    served = proc.process_batch(make_raw_batch(2))
    assert torch.equal(p.sample_actions(served, noise=noise), plain.sample_actions(served, noise=noise))

    with torch.no_grad():
        p.expert.goal_in.weight.normal_(0, 0.5)
    raw = _with_goals(make_raw_batch(2), torch.tensor([[0.4, 0.1, 0.03]] * 2), torch.tensor([1, 0]).bool())

    def loss(goal_row0: list[float], goal_row1: list[float]) -> float:
        r = dict(raw, goal=torch.tensor([goal_row0, goal_row1]))
        b = proc.process_batch(r, train=True)
        return p.compute_loss(b, generator=torch.Generator().manual_seed(5), goal_weight=0.0)[0].item()

    base = loss([0.4, 0.1, 0.03], [0.4, 0.1, 0.03])
    assert loss([0.4, -0.2, 0.03], [0.4, 0.1, 0.03]) != pytest.approx(base)  # the recorded goal counts
    # also where the loss target is masked (a tool within goal_min_distance of it): the head
    # answers for every frame when sampling
    assert loss([0.4, 0.1, 0.03], [0.0, -0.3, 0.5]) != pytest.approx(base)
    with pytest.raises(KeyError, match="goal_input needs the batch's 'goal'"):
        p.compute_loss(proc.process_batch(make_raw_batch(2), train=True))

    # sampling: the head's prediction is the input (moving the head's output moves the actions)
    before = p.sample_actions(served, noise=noise)
    with torch.no_grad():
        p.goal_head[-1].bias.add_(torch.tensor([0.0, 3.0, 0.0]))
    assert not torch.allclose(p.sample_actions(served, noise=noise), before)


def test_goal_input_lets_the_actions_follow_the_predicted_goal(stats) -> None:
    """Same image, state and instruction; two recorded goals, each with its own action chunk. Only
    the goal input tells them apart, so after teacher-forced training the sampled chunk moves
    towards the chunk of whichever goal the head predicts (400 steps get it part of the way)."""
    p, proc = _policy(stats, goal_dim=3, goal_input=True)
    raw = _one_scene(make_raw_batch(8, tasks=["pick up the cube"] * 8))
    goals = torch.tensor([[0.45, 0.2, 0.03], [0.45, -0.2, 0.03]] * 4)
    acts = raw["action"][:2].clone()
    acts[0], acts[1] = acts[0] + 0.5, acts[1] - 0.5
    raw["action"] = acts.repeat(4, 1, 1)
    batch = proc.process_batch(_with_goals(raw, goals), train=True)
    _fit(p, batch, 400, goal_weight=0.0)
    p.eval()
    served = proc.process_batch({k: v[:1] for k, v in raw.items() if k not in ("action", "action_is_pad")})
    noise = torch.randn(1, 16, 7, generator=torch.Generator().manual_seed(2))
    out = []
    for goal in goals[:2]:
        with torch.no_grad():  # make the head answer `goal` whatever it sees
            p.goal_head[-1].weight.zero_()
            p.goal_head[-1].bias.copy_(goal / p.GOAL_SCALE)
        out.append(p.sample_actions(served, noise=noise)[0])
    # normalised, as sampled: the two goals' chunks differ by ~2.5 units per joint
    d_want = (batch["actions"][0] - batch["actions"][1]).flatten()
    d_out = (out[0] - out[1]).flatten()  # nothing else differs between the two samples
    cos = float(d_out @ d_want / (d_out.norm() * d_want.norm()))
    assert cos > 0.8 and d_out.norm() > 0.1 * d_want.norm(), (cos, float(d_out.norm() / d_want.norm()))


def test_goal_input_needs_the_goal_head(stats) -> None:
    with pytest.raises(ConfigError, match="goal_input conditions the actions"):
        get_preset("debug", goal_input=True)


def test_a_given_goal_replaces_the_head_when_serving(stats) -> None:
    """PolicyRunner: obs.extras["goal"] [m] (an oracle's, `evaluate --oracle-goal`) is the goal
    input instead of the head's prediction; a policy without a goal input ignores it."""
    import numpy as np

    from apt_core.model.runner import PolicyRunner
    from apt_core.types import Observation

    p, proc = _policy(stats, goal_dim=3, goal_input=True)
    with torch.no_grad():
        p.expert.goal_in.weight.normal_(0, 0.5)
        p.goal_head[-1].weight.zero_()
        p.goal_head[-1].bias.copy_(torch.tensor([0.45, 0.2, 0.03]) / p.GOAL_SCALE)
    rng = np.random.default_rng(0)
    obs = Observation(
        images={"front": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
        joint_positions=rng.normal(0, 0.3, 7),
        stamp=0.0,
    )

    def act(runner: PolicyRunner, goal: list[float] | None) -> np.ndarray:
        runner.reset()
        extras = {} if goal is None else {"goal": np.array(goal)}
        return runner.predict(Observation(obs.images, obs.joint_positions, 0.0, extras), "pick up the cube")

    runner = PolicyRunner(p, proc, {})
    head = act(runner, None)
    np.testing.assert_allclose(act(runner, [0.45, 0.2, 0.03]), head, atol=1e-5)  # the head's own answer
    assert not np.allclose(act(runner, [0.45, -0.2, 0.03]), head, atol=1e-3)
    plain = PolicyRunner(_policy(stats, goal_dim=3)[0], proc, {})
    np.testing.assert_array_equal(act(plain, [0.45, -0.2, 0.03]), act(plain, None))


def test_goal_pointer_needs_the_goal_input(stats) -> None:
    with pytest.raises(ConfigError, match="goal_pointer supplies the goal input"):
        get_preset("debug", goal_dim=3, goal_pointer=True)
    with pytest.raises(ConfigError, match="goal_pointer_state is read by the goal pointer"):
        get_preset("debug", goal_dim=3, goal_input=True, goal_pointer_state=("gripper",))
    with pytest.raises(ConfigError, match=r"goal_pointer_state names \['claw'\], not among joint_names"):
        get_preset("debug", goal_dim=3, goal_input=True, goal_pointer=True, goal_pointer_state=("claw",))


def test_goal_pointer_reads_only_the_state_entries_it_is_given(stats) -> None:
    """goal_pointer_state=("gripper",): the arm's joints (where it is heading) cannot reach the
    pointer; the gripper (the phase) can."""
    p, proc = _policy(stats, goal_dim=3, goal_input=True, goal_pointer=True, goal_pointer_state=("gripper",))
    assert p.goal_pointer.state_in.in_features == 1 and p.pointer_state == [6]
    with torch.no_grad():
        p.goal_pointer.state_in.weight.normal_(0, 1.0)
    p.eval()
    raw = make_raw_batch(2)

    def goal(joint: int) -> torch.Tensor:
        r = dict(raw, **{"observation.state": raw["observation.state"].clone()})
        r["observation.state"][:, joint] += 1.0
        return p.predict_goal(proc.process_batch(r))

    base = p.predict_goal(proc.process_batch(raw))
    assert torch.equal(goal(0), base) and torch.equal(goal(3), base)
    assert not torch.allclose(goal(6), base)


def test_goal_pointer_learns_the_instructions_target_and_is_what_sampling_acts_on(stats) -> None:
    """PolicyConfig.goal_pointer: a second goal predictor on the backbone's tokens, trained on the
    same targets as the head; when sampling, its answer (not the head's) is the goal input."""
    p, proc = _policy(stats, goal_dim=3, goal_input=True, goal_pointer=True)
    raw = _one_scene(make_raw_batch(8, tasks=["pick up the red cube", "pick up the blue cube"] * 4))
    goals = torch.tensor([[0.45, 0.2, 0.03], [0.45, -0.2, 0.03]] * 4)
    batch = proc.process_batch(_with_goals(raw, goals), train=True)
    loss, info = p.compute_loss(batch, generator=torch.Generator().manual_seed(0), goal_weight=1.0)
    assert info["pointer_err_cm"] > 0 and info["goal_err_cm"] > 0
    p.zero_grad(set_to_none=True)
    loss.backward()
    assert p.goal_pointer.head[-1].weight.grad.abs().sum() > 0
    info = _fit(p, batch, 150, goal_weight=1.0)
    p.eval()
    served = proc.process_batch(raw)
    pred = p.predict_goal(served)  # the pointer's: two targets only the words tell apart
    err = (pred - goals).norm(dim=-1)
    assert err.max() < 0.05, err
    assert info["pointer_err_cm"] < 5
    with torch.no_grad():
        enc = p.encode(served)
        want = p.goal_pointer(enc["features"], enc["lang"], enc["valid"], served["state"])
    assert torch.allclose(pred, want * p.GOAL_SCALE)

    noise = torch.randn(8, 16, 7, generator=torch.Generator().manual_seed(1))
    before = p.sample_actions(served, noise=noise)
    with torch.no_grad():
        p.goal_head[-1].bias.add_(torch.tensor([0.0, 3.0, 0.0]))  # the head no longer matters
    assert torch.equal(p.sample_actions(served, noise=noise), before)
    with torch.no_grad():
        p.goal_pointer.head[-1].bias.add_(torch.tensor([0.0, 3.0, 0.0]))
    assert not torch.allclose(p.sample_actions(served, noise=noise), before)


def test_goal_pointer_also_learns_the_near_frames_the_head_skips(stats) -> None:
    """`goal_near` (a target the tool is already close to): the head's loss leaves these frames
    out (the arm's joints would tell it the answer), the pointer, which reads no arm joint, learns
    them. The policy acts on them at the end of every reach."""
    p, proc = _policy(stats, goal_dim=3, goal_input=True, goal_pointer=True)
    raw = make_raw_batch(4)
    goals = torch.tensor([[0.45, 0.2, 0.03]] * 4)
    far = torch.tensor([1, 0, 0, 0]).bool()
    near = torch.tensor([0, 1, 1, 0]).bool()
    batch = proc.process_batch(dict(_with_goals(raw, goals, far), goal_near=near), train=True)
    assert torch.equal(batch["goal_near"], near)
    g = torch.Generator().manual_seed(0)
    _, info = p.compute_loss(batch, generator=g, goal_weight=1.0)
    assert info["goal_frac"] == 0.25  # the head: the far frame only
    with torch.no_grad():  # the pointer's mean error is over the far and the near frames
        enc = p.encode(batch)
        dist = (p._pointer_units(enc) * p.GOAL_SCALE - goals).norm(dim=-1)
    assert info["pointer_err_cm"] == pytest.approx(float(dist[:3].mean()) * 100, rel=1e-4)
    assert info["pointer_err_cm"] != pytest.approx(float(dist[0]) * 100, rel=1e-3)
    with pytest.raises(Exception, match=r"goal_near has shape \(2,\), expected \(4,\)"):
        proc.process_batch(dict(_with_goals(raw, goals, far), goal_near=near[:2]))


def test_pointer_loss_alone_is_the_pointers_part_of_the_loss_and_trains_only_the_pointer(stats) -> None:
    """compute_pointer_loss: the pointer's term of compute_loss, without running the expert; with
    stages.train_only(policy, "goal_pointer") its gradient reaches the pointer's weights only."""
    from apt_core.model.stages import train_only

    p, proc = _policy(stats, goal_dim=3, goal_input=True, goal_pointer=True)
    goals = torch.tensor([[0.45, 0.2, 0.03]] * 4)
    near = torch.tensor([0, 1, 0, 0]).bool()
    batch = proc.process_batch(
        dict(_with_goals(make_raw_batch(4), goals, torch.tensor([1, 0, 1, 0]).bool()), goal_near=near),
        train=True,
    )
    _, full = p.compute_loss(batch, generator=torch.Generator().manual_seed(0), goal_weight=1.0)
    calls: list[int] = []
    p.expert.register_forward_hook(lambda *a: calls.append(1))
    n = train_only(p, "goal_pointer")
    assert n == sum(q.numel() for q in p.goal_pointer.parameters()) > 0
    loss, info = p.compute_pointer_loss(batch)
    assert not calls  # no expert pass
    assert info["loss"] == pytest.approx(full["pointer_loss"], rel=1e-6)
    assert info["pointer_err_cm"] == pytest.approx(full["pointer_err_cm"], rel=1e-6)
    loss.backward()
    trained = {name for name, q in p.named_parameters() if q.grad is not None and q.grad.abs().sum() > 0}
    assert trained and all(name.startswith("goal_pointer.") for name in trained)
    plain, _ = _policy(stats, goal_dim=3, goal_input=True)
    with pytest.raises(ValueError, match="no goal pointer"):
        plain.compute_pointer_loss(batch)
    with pytest.raises(ValueError, match="no module 'goal_pointer' to train"):
        train_only(plain, "goal_pointer")
    with pytest.raises(KeyError, match="missing 'goal'"):
        p.compute_pointer_loss({k: v for k, v in batch.items() if k != "goal"})


def test_goal_noise_moves_a_share_of_the_goals_the_actions_see_in_training(stats) -> None:
    """compute_loss(goal_noise=s, goal_noise_frac=f): about f of the samples see their recorded goal
    moved horizontally by N(0, s^2) per axis, the rest and every height exactly; the goal losses
    still compare with the recorded goal."""
    p, proc = _policy(stats, goal_dim=3, goal_input=True, goal_pointer=True)
    n = 512
    goals = torch.rand(n, 3) * torch.tensor([0.3, 0.6, 0.1]) + torch.tensor([0.3, -0.3, 0.0])
    batch = proc.process_batch(_with_goals(make_raw_batch(n), goals), train=True)
    seen: list[torch.Tensor] = []
    p.expert.goal_in.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))

    def moved(**kw) -> tuple[torch.Tensor, dict[str, float]]:
        seen.clear()
        with torch.no_grad():
            _, info = p.compute_loss(batch, generator=torch.Generator().manual_seed(3), goal_weight=1.0, **kw)
        return seen[0] * p.GOAL_SCALE - goals, info

    off, exact = moved()
    assert off.abs().max() < 1e-6  # no noise by default
    off, info = moved(goal_noise=0.02, goal_noise_frac=0.5)
    assert off[:, 2].abs().max() < 1e-6  # the height is never moved
    hit = off[:, :2].norm(dim=-1) > 1e-6
    assert 0.4 < hit.float().mean() < 0.6
    assert off[hit, :2].std().item() == pytest.approx(0.02, rel=0.15)
    # the pointer's and the head's targets are the recorded goals, not the moved ones
    assert info["pointer_err_cm"] == pytest.approx(exact["pointer_err_cm"], rel=1e-5)
    assert info["goal_err_cm"] == pytest.approx(exact["goal_err_cm"], rel=1e-5)
    assert moved(goal_noise=0.02, goal_noise_frac=1.0)[0][:, :2].norm(dim=-1).min() > 1e-6
    assert moved(goal_noise=0.02, goal_noise_frac=0.0)[0].abs().max() < 1e-6
