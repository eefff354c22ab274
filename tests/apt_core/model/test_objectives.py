"""DDIM (squared-cosine, epsilon) and flow matching: schedules and exact recovery with an oracle."""

from __future__ import annotations

import torch

from apt_core.model.config import ObjectiveConfig
from apt_core.model.objectives import DDIMObjective, FlowObjective


def test_ddim_schedule_matches_the_paper_setup():
    d = DDIMObjective(ObjectiveConfig(kind="ddim", train_timesteps=100, inference_steps=20))
    assert d.timesteps(20) == list(range(95, -1, -5))
    ac = d.alphas_cumprod
    assert ac.shape == (100,) and bool((ac[1:] < ac[:-1]).all())
    assert 0.99 < float(ac[0]) <= 1.0 and float(ac[-1]) < 1e-3  # nearly clean -> nearly pure noise
    # squared cosine: alpha_bar(t) ~ cos^2(((t/T) + s) / (1 + s) * pi / 2), checked at the midpoint
    mid = (
        torch.cos(torch.tensor((0.5 + 0.008) / 1.008 * torch.pi / 2)) ** 2
        / torch.cos(torch.tensor(0.008 / 1.008 * torch.pi / 2)) ** 2
    )
    assert abs(float(ac[49]) - float(mid)) < 0.02


def test_ddim_with_oracle_epsilon_recovers_the_sample():
    d = DDIMObjective(ObjectiveConfig(kind="ddim"))
    x0 = torch.randn(3, 16, 7)
    noise = torch.randn(3, 16, 7)
    ac = d.alphas_cumprod

    def oracle(x, t, i):  # the epsilon that is consistent with x0 at this noise level
        ab = ac[round(float(t[0]) * d.T)]
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    for steps in (20, 10, 3):
        assert torch.allclose(d.sample(oracle, noise, steps), x0, atol=1e-4)
    # and the training pair is consistent with the same algebra
    x_t, t, target = d.training_pair(x0, noise, torch.Generator().manual_seed(0))
    assert torch.equal(target, noise)
    ab = ac[(t * d.T).round().long()].view(-1, 1, 1)
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_flow_with_oracle_velocity_recovers_the_sample():
    f = FlowObjective(ObjectiveConfig(kind="flow", inference_steps=10))
    x0, noise = torch.randn(2, 16, 7), torch.randn(2, 16, 7)
    assert torch.allclose(f.sample(lambda x, t, i: noise - x0, noise, 10), x0, atol=1e-5)
    x_t, t, target = f.training_pair(x0, noise, torch.Generator().manual_seed(0))
    assert torch.allclose(target, noise - x0)
    assert bool(((t > 0) & (t <= 1)).all())
    tt = t.view(-1, 1, 1)
    assert torch.allclose(x_t, tt * noise + (1 - tt) * x0)
    # Beta(1.5, 1) puts more mass on the noisy end: mean 0.6
    _, ts, _ = f.training_pair(
        torch.zeros(4000, 1, 1), torch.zeros(4000, 1, 1), torch.Generator().manual_seed(1)
    )
    assert 0.57 < float(ts.mean()) < 0.63
