"""Denoising objectives: DDIM epsilon prediction (the paper's) and flow matching (pi0's).

Both expose the same two calls, so the policy does not care which one is configured:
  training_pair(x0, noise, generator) -> (x_t, t, target)   t in [0, 1] fed to the expert
  sample(denoise_fn, noise, num_steps) -> x0                 denoise_fn(x_t, t, i) -> prediction
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import ObjectiveConfig

# denoise_fn(x_t (B, H, A), t (B,), step index i into step_times(num_steps)) -> prediction (B, H, A)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _squaredcos_alphas_cumprod(n: int) -> torch.Tensor:
    """Squared-cosine ("squaredcos_cap_v2", Nichol & Dhariwal 2021) cumulative alphas, as diffusers."""

    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), 0)


class DDIMObjective:
    """Epsilon prediction with `train_timesteps` training steps and deterministic DDIM sampling."""

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg
        self.T = cfg.train_timesteps
        if cfg.schedule == "squaredcos_cap_v2":
            ac = _squaredcos_alphas_cumprod(self.T)
        else:  # linear betas 1e-4 .. 2e-2 (DDPM)
            ac = torch.cumprod(1.0 - torch.linspace(1e-4, 2e-2, self.T, dtype=torch.float64), 0)
        self.alphas_cumprod = ac.float()

    def training_pair(
        self, x0: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B = x0.shape[0]
        t_int = torch.randint(0, self.T, (B,), generator=generator, device="cpu").to(x0.device)
        ab = self.alphas_cumprod.to(x0.device)[t_int].view(B, 1, 1)  # (B, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return x_t, t_int.float() / self.T, noise

    def timesteps(self, num_steps: int) -> list[int]:
        """'Leading' spacing as diffusers' DDIMScheduler: 20 of 100 -> 95, 90, ..., 0."""
        if not 1 <= num_steps <= self.T:
            raise ValueError(f"DDIM num_steps must be in [1, {self.T}], got {num_steps}")
        ratio = self.T // num_steps
        return [i * ratio for i in range(num_steps)][::-1]

    def step_times(self, num_steps: int) -> list[float]:
        """The model times t in [0, 1] that `sample` will query, in order."""
        return [t / self.T for t in self.timesteps(num_steps)]

    def sample(self, fn: DenoiseFn, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
        ac = self.alphas_cumprod.to(noise.device)
        steps = self.timesteps(num_steps)
        ratio = self.T // num_steps
        x = noise
        B = noise.shape[0]
        for i, t in enumerate(steps):
            ab_t = ac[t]
            # final step goes to alpha_bar = 1 ("set_alpha_to_one"), i.e. the clean sample
            ab_prev = ac[t - ratio] if t - ratio >= 0 else torch.ones((), device=noise.device)
            eps = fn(x, torch.full((B,), t / self.T, device=noise.device), i)
            x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
            if self.cfg.clip_sample > 0:
                x0 = x0.clamp(-self.cfg.clip_sample, self.cfg.clip_sample)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x


class FlowObjective:
    """Flow matching as pi0: x_t = t * noise + (1 - t) * x0, target velocity noise - x0, Euler 1 -> 0."""

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg
        # pi0 samples t from Beta(1.5, 1) to emphasise the noisier half of the path
        self._beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))

    def training_pair(
        self, x0: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B = x0.shape[0]
        if generator is not None:
            # Beta has no generator argument; Beta(a, 1) has CDF t^a, so t = u^(1/a) by inversion
            t = torch.rand((B,), generator=generator) ** (1 / 1.5)
        else:
            t = self._beta.sample((B,))
        t = (t * 0.999 + 0.001).to(x0.device)  # keep away from t = 0 (pure data)
        tt = t.view(B, 1, 1)
        x_t = tt * noise + (1 - tt) * x0
        return x_t, t, noise - x0

    def step_times(self, num_steps: int) -> list[float]:
        return [1.0 - i / num_steps for i in range(num_steps)]

    def sample(self, fn: DenoiseFn, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
        if num_steps < 1:
            raise ValueError(f"flow num_steps must be >= 1, got {num_steps}")
        x = noise
        B = noise.shape[0]
        dt = 1.0 / num_steps
        for i, t in enumerate(self.step_times(num_steps)):
            v = fn(x, torch.full((B,), t, device=noise.device), i)
            x = x - dt * v
        return x


def build_objective(cfg: ObjectiveConfig) -> DDIMObjective | FlowObjective:
    return DDIMObjective(cfg) if cfg.kind == "ddim" else FlowObjective(cfg)
