"""Qwen3-VL backbone through `transformers`: the paper's VLM (real weights) or a tiny one for tests.

kind "qwen3vl": `Qwen3VLForConditionalGeneration.from_pretrained(model_path)` (a local folder or a
hub id, on users' GPU machines); its `.model` (vision tower + LLM, no LM head) is kept.
kind "tiny_qwen3vl": the same architecture built from a small config in code (random weights, real
Qwen vocabulary size and special-token ids), so the whole path is tested on CPU without downloads.

Inputs are built by hand (no torchvision-based Qwen image processor here):
  pixels -> Qwen2/3-VL patch layout (grid_t*grid_h*grid_w, C*temporal*patch*patch), mean/std 0.5
  ids    = <|im_start|>user\\n  [<|vision_start|> <|image_pad|> x n <|vision_end|>] per camera
           instruction tokens (right-padded to max_text_len)
  mm_token_type_ids = 1 on image pads (drives 3-D M-RoPE), 0 elsewhere
The image comes before the instruction and the LLM is causal, so vision-token hidden states never
depend on the instruction (what stage 1 relies on). Taps: `output_hidden_states`, every k-th layer.
"""

from __future__ import annotations

import torch

from .backbone import Backbone, BackboneOutput, select_taps
from .config import BackboneConfig, PolicyConfig

IM_START, NEWLINE, USER = 151644, 198, 872  # <|im_start|>, "\n", "user" in the Qwen vocabulary
MEAN = STD = 0.5  # Qwen3-VL image processor normalisation


def tiny_qwen3vl_config(cfg: BackboneConfig, image_size: int):
    """A small Qwen3-VL config (random weights) with the real vocabulary size and token ids."""
    from transformers import Qwen3VLConfig

    head_dim = cfg.width // cfg.n_heads
    q = head_dim // 2  # M-RoPE sections (t, h, w) must add up to head_dim / 2
    sections = [q - 2 * (q // 3), q // 3, q // 3]
    patch = 8
    grid = image_size // patch
    return Qwen3VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": cfg.width,
            "intermediate_size": 2 * cfg.width,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": 1,
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": sections,
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": patch,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": cfg.width,
            "num_position_embeddings": max(16, grid * grid),
            "deepstack_visual_indexes": [1],
        },
    )


class Qwen3VLBackbone(Backbone):
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    lora_scope = "language_model."

    def __init__(self, cfg: BackboneConfig, policy_cfg: PolicyConfig) -> None:
        super().__init__()
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel

        if cfg.kind == "qwen3vl":
            dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
            full = Qwen3VLForConditionalGeneration.from_pretrained(cfg.model_path, dtype=dtype)
            self.vlm = full.model
            self.pretrained = True
        else:
            self.vlm = Qwen3VLModel(tiny_qwen3vl_config(cfg, policy_cfg.image_size))
        vc, tc = self.vlm.config.vision_config, self.vlm.config.text_config
        self.patch, self.tpatch, self.merge = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size
        S = policy_cfg.image_size
        if S % (self.patch * self.merge):
            raise ValueError(
                f"image_size {S} must be a multiple of patch*merge = {self.patch * self.merge} for Qwen3-VL"
            )
        self.grid = S // self.patch
        self.n_img_tokens = (self.grid // self.merge) ** 2
        self.n_cams = len(policy_cfg.camera_names)
        self.image_token_id = self.vlm.config.image_token_id
        self.vstart, self.vend = self.vlm.config.vision_start_token_id, self.vlm.config.vision_end_token_id
        self.tap_layers = select_taps(tc.num_hidden_layers, cfg.tap_every)
        self.feature_dim = tc.hidden_size
        prefix = [IM_START, USER, NEWLINE]
        for _ in range(self.n_cams):
            prefix += [self.vstart] + [self.image_token_id] * self.n_img_tokens + [self.vend]
        self.register_buffer("prefix_ids", torch.tensor(prefix), persistent=False)

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B*C, 3, S, S) in [0, 1] -> (B*C*grid^2, 3*temporal*patch^2), the Qwen2/3-VL processor layout."""
        x = (images - MEAN) / STD
        n, c = x.shape[:2]
        g, m, p, tp = self.grid, self.merge, self.patch, self.tpatch
        x = x[:, None].expand(n, tp, c, g * p, g * p)  # a still image repeated over the temporal patch
        x = x.reshape(n, 1, tp, c, g // m, m, p, g // m, m, p)
        x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # (n, t, gh/m, gw/m, m, m, c, tp, p, p)
        return x.reshape(n * g * g, c * tp * p * p)

    def forward(
        self, images: torch.Tensor, lang_ids: torch.Tensor, lang_mask: torch.Tensor, insulate: bool = False
    ) -> BackboneOutput:
        B, C = images.shape[:2]
        if C != self.n_cams:
            raise ValueError(f"backbone expects {self.n_cams} cameras, got {C}")
        dev = images.device
        dtype = next(self.vlm.parameters()).dtype
        pixel_values = self._patches(images.flatten(0, 1)).to(dtype)
        grid_thw = torch.tensor([[1, self.grid, self.grid]] * (B * C), device=dev)
        P = self.prefix_ids.shape[0]
        ids = torch.cat([self.prefix_ids[None].expand(B, P), lang_ids], 1)  # (B, P + L)
        attn = torch.cat([torch.ones(B, P, dtype=torch.long, device=dev), lang_mask.long()], 1)
        mm = (ids == self.image_token_id).int()
        out = self.vlm(
            input_ids=ids,
            attention_mask=attn,
            pixel_values=pixel_values,
            image_grid_thw=grid_thw,
            mm_token_type_ids=mm,
            output_hidden_states=True,
            use_cache=False,
        )
        keep = torch.cat(
            [
                self.prefix_ids == self.image_token_id,
                torch.ones(lang_ids.shape[1], dtype=torch.bool, device=dev),
            ]
        )
        feats = []
        for i in self.tap_layers:
            f = out.hidden_states[i][:, keep].float()  # (B, N, D): image tokens + instruction tokens
            feats.append(f.detach() if insulate else f)
        nv = int((self.prefix_ids == self.image_token_id).sum())
        lang = torch.cat([torch.zeros(B, nv, dtype=torch.bool, device=dev), torch.ones_like(lang_mask)], 1)
        valid = torch.cat([torch.ones(B, nv, dtype=torch.bool, device=dev), lang_mask], 1)
        return BackboneOutput(feats, lang, valid, list(self.tap_layers))
