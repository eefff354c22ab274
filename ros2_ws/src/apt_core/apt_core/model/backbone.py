"""Backbone interface: images + instruction -> tapped per-layer features.

A backbone returns `BackboneOutput`: one (B, N, D) feature tensor per tapped layer (same N and D for
all taps), a mask telling language tokens from vision tokens, and a validity mask (padding). The
expert consumes tap j in its layer j (stage 2) or tap 2i+1 in its layer i (stage 1).

Implementations:
  TinyBackbone            random prefix-LM (vision tokens never see text), for tests (this file)
  MiniLMEffNetBackbone    all-MiniLM-L6-v2 + EfficientNet-Lite0, shipped weights (backbone_minilm_effnet)
  Qwen3VLBackbone         Qwen3-VL via transformers, real or tiny-from-config (backbone_qwen3vl)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import BackboneConfig, PolicyConfig


@dataclass
class BackboneOutput:
    features: list[torch.Tensor]  # per tap: (B, N, D)
    lang_mask: torch.Tensor  # (B, N) bool: True where the token is a language token
    valid_mask: torch.Tensor  # (B, N) bool: True for real tokens, False for padding
    tap_layers: list[int]  # hidden-state index of each tap (0 = embeddings)
    # keypoint backbones of policies with goal_pointer_coords only: per tap (B, N, C, 3), for each
    # token and camera c the token's image
    # position (x, y) in [-1, 1] and 1 when it is a keypoint of camera c, zeros otherwise (language
    # tokens, other cameras): what the goal pointer's coordinate readout averages (model/pointer.py)
    points: list[torch.Tensor] | None = None
    # keypoint backbones of policies with goal_pointer_pixels only: per tap the EfficientNet stage
    # map the keypoints were taken from, (B * C, C_s, h, w), camera-major per sample: what the goal
    # pointer's pixel readout points into (model/pointer.py)
    maps: list[torch.Tensor] | None = None


def pixel_centres(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """The centres of an h x w map's pixels as (x, y) in [-1, 1], row-major: (h * w, 2), on like's
    device and dtype. A softmax over the pixels times this is a soft argmax (finer than a pixel)."""
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=like.device, dtype=like.dtype)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(h * w, 2)


def select_taps(n_layers: int, every: int) -> list[int]:
    """Hidden-state indices tapped: every k-th layer counted down from the top, an even count.

    hidden_states has n_layers + 1 entries (0 = embeddings). Counting from the top keeps the last
    layer; the count is made even (dropping the lowest) so stage 1 can take exactly half.
    Qwen3-VL-2B (28 layers, k=3): 1, 4, ..., 28 -> 10 taps -> 10 expert layers, 5 in stage 1.
    """
    idx = list(range(n_layers, 0, -every))[::-1]
    if len(idx) % 2:
        idx = idx[1:]
    if not idx:
        raise ValueError(f"tapping every {every} of {n_layers} layers leaves no even number of taps")
    return idx


class Backbone(nn.Module):
    """Base class. Subclasses set feature_dim, tap_layers, pretrained and lora_targets."""

    feature_dim: int
    tap_layers: list[int]
    pretrained: bool = False  # weights come from outside the checkpoint (shipped / hub)
    lora_targets: tuple[str, ...] = ()  # names of nn.Linear submodules LoRA wraps
    lora_scope: str = ""  # only submodules whose full name contains this (empty: anywhere)

    @property
    def num_taps(self) -> int:
        return len(self.tap_layers)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters that belong to the (pre)trained backbone proper, excluding LoRA and necks."""
        return [p for n, p in self.named_parameters() if "lora_" not in n and not n.startswith("neck.")]

    def forward(
        self, images: torch.Tensor, lang_ids: torch.Tensor, lang_mask: torch.Tensor, insulate: bool = False
    ) -> BackboneOutput:
        raise NotImplementedError


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, N, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, h, N, W/h)
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, W))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyBackbone(Backbone):
    """A small random vision-language prefix-LM for tests: no pretrained weights needed.

    Sequence: [vision tokens of every camera ; instruction tokens]. Vision tokens attend only to
    vision tokens and text tokens attend to vision + earlier text (as a VLM with the image first
    and causal attention), so vision features never depend on the instruction.
    """

    lora_targets = ("qkv", "proj")

    def __init__(self, cfg: BackboneConfig, policy_cfg: PolicyConfig, vocab_size: int) -> None:
        super().__init__()
        W = cfg.width
        self.n_cams = len(policy_cfg.camera_names)
        self.patch = cfg.patch_size
        n_patch = (policy_cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, W, cfg.patch_size, cfg.patch_size)
        self.vis_pos = nn.Parameter(torch.randn(self.n_cams, n_patch, W) * 0.02)
        self.tok_embed = nn.Embedding(vocab_size, W)
        self.txt_pos = nn.Parameter(torch.randn(cfg.max_text_len, W) * 0.02)
        self.blocks = nn.ModuleList(_Block(W, cfg.n_heads) for _ in range(cfg.n_layers))
        self.feature_dim = W
        self.tap_layers = select_taps(cfg.n_layers, cfg.tap_every)
        self.n_vis = self.n_cams * n_patch

    def forward(
        self, images: torch.Tensor, lang_ids: torch.Tensor, lang_mask: torch.Tensor, insulate: bool = False
    ) -> BackboneOutput:
        B, C = images.shape[:2]
        if C != self.n_cams:
            raise ValueError(f"TinyBackbone expects {self.n_cams} cameras, got {C}")
        v = self.patch_embed(images.flatten(0, 1) * 2 - 1)  # (B*C, W, h, w)
        v = v.flatten(2).transpose(1, 2).reshape(B, C, -1, v.shape[1]) + self.vis_pos  # (B, C, P, W)
        v = v.reshape(B, -1, v.shape[-1])  # (B, Nv, W)
        L = lang_ids.shape[1]
        t = self.tok_embed(lang_ids) + self.txt_pos[:L]  # (B, L, W)
        x = torch.cat([v, t], 1)  # (B, N, W)
        Nv, N = v.shape[1], x.shape[1]
        is_lang = torch.zeros(N, dtype=torch.bool, device=x.device)
        is_lang[Nv:] = True
        # allowed[i, j]: vision queries see vision keys; text queries see vision + earlier valid text
        causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
        allowed = (~is_lang[None, :] | (is_lang[:, None] & causal)).unsqueeze(0)  # (1, N, N)
        valid = torch.cat([torch.ones(B, Nv, dtype=torch.bool, device=x.device), lang_mask], 1)  # (B, N)
        allowed = allowed & valid[:, None, :]
        allowed = allowed | torch.eye(N, dtype=torch.bool, device=x.device)  # padding rows see themselves
        allowed = allowed.unsqueeze(1)  # (B, 1, N, N)
        hs = [x]
        for blk in self.blocks:
            x = blk(x, allowed)
            hs.append(x)
        feats = [hs[i] for i in self.tap_layers]
        if insulate:
            feats = [f.detach() for f in feats]
        return BackboneOutput(feats, is_lang[None].expand(B, N), valid, list(self.tap_layers))


def backbone_class(kind: str) -> type[Backbone]:
    """The Backbone subclass of a BackboneConfig.kind (imports the heavy ones only when named)."""
    if kind == "tiny":
        return TinyBackbone
    if kind == "minilm_effnet":
        from .backbone_minilm_effnet import MiniLMEffNetBackbone

        return MiniLMEffNetBackbone
    from .backbone_qwen3vl import Qwen3VLBackbone

    return Qwen3VLBackbone


def build_backbone(cfg: PolicyConfig, vocab_size: int) -> Backbone:
    cls = backbone_class(cfg.backbone.kind)
    if cls is TinyBackbone:
        return TinyBackbone(cfg.backbone, cfg, vocab_size)
    return cls(cfg.backbone, cfg)
