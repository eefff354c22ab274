"""The action expert: a transformer denoiser with layer-wise gated fusion of backbone features.

Expert sequence (T tokens, width W):
    [lang tokens (token_insertion only) | action history (n_hist) | state (1) | noisy actions (H)]
Attention among expert tokens is block-causal ("multimodal causal"): each block sees itself and the
blocks before it, so history/state tokens never see the noisy actions. The diffusion time enters
every layer through adaptive RMSNorm (scale/shift regressed from the time embedding, zero-init).

Layer l receives its tapped backbone layer f_l (B, N, D) projected to the expert width, through a
learnable gate g_l = sigmoid(logit) (per channel, or one scalar):
    pi style    out = g * Attn(q, [ctx; x]) + (1 - g) * Attn(q, x)         (joint attention)
    gr00t style out = g * (x + CrossAttn(x, ctx)) + (1 - g) * x            (DiT with cross-attn)
i.e. the fused (VLM-conditioned) path and the highway (expert-only) path, mixed per channel.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import PolicyConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused op


class AdaRMSNorm(nn.Module):
    """RMSNorm whose scale and shift are regressed from the time embedding (zero-init: plain norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.mod = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W) time embedding -> (1 + scale, shift), each (B, 1, W); precomputed for all steps
        at inference."""
        scale, shift = self.mod(cond).unsqueeze(1).chunk(2, -1)
        return 1 + scale, shift

    def forward(self, x: torch.Tensor, mod: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        gain, shift = mod
        return torch.addcmul(shift, self.norm(x), gain)  # norm(x) * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 as DDPM integer steps). (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class Gate(nn.Module):
    """sigmoid(logit): a per-channel vector (authors' release) or one scalar per layer (paper text)."""

    def __init__(self, width: int, kind: str, init: float) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((width if kind == "vector" else 1,), float(init)))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)


class ExpertLayer(nn.Module):
    def __init__(self, cfg: PolicyConfig, feature_dim: int) -> None:
        super().__init__()
        W, h = cfg.expert.width, cfg.expert.n_heads
        self.style, self.heads, self.width = cfg.expert.style, h, W
        # projection of the tapped backbone layer into this layer's key/value space
        self.ctx_norm = RMSNorm(feature_dim)
        self.ctx_proj = nn.Linear(feature_dim, W)
        self.ctx_kv = nn.Linear(W, 2 * W)
        self.gate = Gate(W, cfg.expert.gate, cfg.expert.gate_init)
        self.norm1 = AdaRMSNorm(W)
        self.qkv = nn.Linear(W, 3 * W)
        self.out = nn.Linear(W, W)
        if self.style == "gr00t":
            self.norm_x = AdaRMSNorm(W)
            self.q_x = nn.Linear(W, W)
            self.out_x = nn.Linear(W, W)
        self.norm2 = AdaRMSNorm(W)
        hidden = int(cfg.expert.mlp_ratio * W)
        self.fc1 = nn.Linear(W, hidden)
        self.fc2 = nn.Linear(hidden, W)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.heads, self.width // self.heads).transpose(1, 2)  # (B, h, N, W/h)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        B, _, N, _ = x.shape
        return x.transpose(1, 2).reshape(B, N, self.width)  # (B, N, W)

    def context(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the backbone tokens for this layer; computed once per chunk. (B,h,N,d)."""
        kc, vc = self.ctx_kv(self.ctx_proj(self.ctx_norm(feat))).chunk(2, -1)
        return self._heads(kc), self._heads(vc)

    def norms(self) -> list[AdaRMSNorm]:
        return [self.norm1, self.norm_x, self.norm2] if self.style == "gr00t" else [self.norm1, self.norm2]

    def modulations(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [n.modulation(cond) for n in self.norms()]

    def forward(
        self,
        x: torch.Tensor,  # (B, T, W) expert tokens
        mods: list[tuple[torch.Tensor, torch.Tensor]],  # per AdaRMSNorm: (1 + scale, shift), (B, 1, W) each
        ctx: tuple[torch.Tensor, torch.Tensor],  # keys/values of the backbone tokens (B, h, N, d)
        masks: dict[str, torch.Tensor],  # additive float masks from ActionExpert.build_masks
    ) -> torch.Tensor:
        m1, *mx, m2 = mods
        B, T, W = x.shape
        # (B, T, 3W) -> 3 x (B, h, T, d) in one view + permute (fewer ops per denoising step)
        q, k, v = (
            self.qkv(self.norm1(x, m1))
            .view(B, T, 3, self.heads, W // self.heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        kc, vc = ctx
        g = self.gate()  # (W,) or (1,)
        highway = F.scaled_dot_product_attention(q, k, v, attn_mask=masks["self"])  # (B, h, T, d)
        if self.style == "pi":
            fused = F.scaled_dot_product_attention(
                q, torch.cat([kc, k], 2), torch.cat([vc, v], 2), attn_mask=masks["joint"]
            )  # (B, h, T, d)
            # g * fused + (1 - g) * highway, with the per-channel gate laid out as (h, 1, d)
            gh = g.view(self.heads, 1, W // self.heads) if g.numel() > 1 else g
            x = x + self.out(self._merge(torch.lerp(highway, fused, gh)))
        else:
            x = x + self.out(self._merge(highway))
            qx = self._heads(self.q_x(self.norm_x(x, mx[0])))
            cross = self._merge(F.scaled_dot_product_attention(qx, kc, vc, attn_mask=masks["ctx"]))
            x = x + g * self.out_x(cross)  # = g * (x + cross) + (1 - g) * x
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x, m2))))


class ActionExpert(nn.Module):
    """Token embeddings, `n_layers` ExpertLayers and the output head (epsilon or velocity)."""

    def __init__(self, cfg: PolicyConfig, feature_dim: int, n_layers: int) -> None:
        super().__init__()
        W = cfg.expert.width
        self.cfg = cfg
        self.n_hist, self.H = cfg.n_action_history, cfg.chunk_length
        self.state_in = nn.Linear(cfg.state_dim, W)
        self.hist_in = nn.Linear(cfg.action_dim, W)
        self.action_in = nn.Linear(cfg.action_dim, W)
        self.pos = nn.Parameter(torch.randn(self.n_hist + 1 + self.H, W) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W), nn.SiLU())
        self.layers = nn.ModuleList(ExpertLayer(cfg, feature_dim) for _ in range(n_layers))
        self.final_norm = AdaRMSNorm(W)
        self.head = nn.Linear(W, cfg.action_dim)
        if cfg.goal_input:
            # goal position (units of APTPolicy.GOAL_SCALE) -> added to every action token; zero at
            # first, so a policy that gains the input starts out acting as it did without it
            self.goal_in = nn.Linear(cfg.goal_dim, W)
            nn.init.zeros_(self.goal_in.weight)
            nn.init.zeros_(self.goal_in.bias)
        self.token_insertion = cfg.variant == "token_insertion"
        if self.token_insertion:
            # language tokens (top tap) appended to the expert's own sequence instead of gated fusion
            self.lang_norm = RMSNorm(feature_dim)
            self.lang_in = nn.Linear(feature_dim, W)

    def block_ids(self, n_lang: int, device: torch.device) -> torch.Tensor:
        """Block index per expert token: 0 language, 1 history + state, 2 actions. (T,)."""
        return torch.tensor([0] * n_lang + [1] * (self.n_hist + 1) + [2] * self.H, device=device)

    def prefix(
        self, state: torch.Tensor, hist: torch.Tensor | None, lang: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the non-action tokens and the expert self-attention mask; once per chunk."""
        B = state.shape[0]
        toks = []
        if self.n_hist:
            toks.append(self.hist_in(hist))  # (B, n_hist, W)
        toks.append(self.state_in(state)[:, None])  # (B, 1, W)
        pre = torch.cat(toks, 1) + self.pos[: self.n_hist + 1]
        n_lang = 0
        key_valid = torch.ones(B, self.n_hist + 1 + self.H, dtype=torch.bool, device=state.device)
        if lang is not None:
            lt, lm = lang  # (B, L, W), (B, L)
            pre = torch.cat([lt, pre], 1)
            n_lang = lt.shape[1]
            key_valid = torch.cat([lm, key_valid], 1)
        blk = self.block_ids(n_lang, state.device)
        allowed = (blk[None, :] <= blk[:, None])[None] & key_valid[:, None, :]  # (B, T, T)
        allowed = allowed | torch.eye(allowed.shape[-1], dtype=torch.bool, device=state.device)
        return pre, allowed.unsqueeze(1)

    @staticmethod
    def build_masks(
        ctx_allowed: torch.Tensor, self_allowed: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Additive attention masks (0 / -inf), built once per chunk instead of per layer and step.

        ctx_allowed (B, 1, 1, N): backbone tokens each sample may attend to.
        self_allowed (B, 1, T, T): block-causal mask among expert tokens.
        joint (B, 1, T, N + T): pi-style attention over [backbone tokens; expert tokens].
        """
        T = self_allowed.shape[-1]
        joint = torch.cat(
            [ctx_allowed.expand(-1, -1, T, -1), self_allowed.expand(ctx_allowed.shape[0], -1, -1, -1)], -1
        )

        def additive(m: torch.Tensor) -> torch.Tensor:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))

        return {"ctx": additive(ctx_allowed), "self": additive(self_allowed), "joint": additive(joint)}

    def time_conditioning(self, t: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Modulations of every AdaRMSNorm for times t (S,): [layer][norm] -> (1 + scale, shift),
        each (S, 1, W); the last entry is the final norm.

        At inference the S denoising times are known up front, so this runs once per chunk as
        batched matmuls instead of once per step and layer.
        """
        cond = self.time_mlp(timestep_embedding(t, self.cfg.expert.width))  # (S, W)
        return [layer.modulations(cond) for layer in self.layers] + [[self.final_norm.modulation(cond)]]

    def forward(
        self,
        noisy: torch.Tensor,  # (B, H, A)
        t: torch.Tensor | list,  # (B,) times in [0, 1], or their precomputed time_conditioning
        prefix: torch.Tensor,  # (B, T - H, W)
        masks: dict[str, torch.Tensor],  # from build_masks (once per chunk)
        ctx: list[tuple[torch.Tensor, torch.Tensor]],  # per layer keys/values
        hidden: list[torch.Tensor] | None = None,  # when given, receives the last layer's tokens (B, T, W)
        goal: torch.Tensor | None = None,  # (B, goal_dim) goal input (cfg.goal_input), GOAL_SCALE units
    ) -> torch.Tensor:
        mods = self.time_conditioning(t) if isinstance(t, torch.Tensor) else t
        a = self.action_in(noisy) + self.pos[self.n_hist + 1 :]  # (B, H, W)
        if goal is not None:
            a = a + self.goal_in(goal)[:, None]
        x = torch.cat([prefix, a], 1)  # (B, T, W)
        for layer, c, m in zip(self.layers, ctx, mods, strict=False):
            x = layer(x, m, c, masks)
        if hidden is not None:
            hidden.append(x)
        return self.head(self.final_norm(x[:, -self.H :], mods[-1][0]))  # (B, H, A)
