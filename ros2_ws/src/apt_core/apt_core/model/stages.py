"""Stage 1 -> stage 2 expansion and per-mode freezing helpers.

Expansion (APT): stage-1 expert layer i is copied into stage-2 layer 2i+1 (it keeps reading the same
tapped backbone layer, 2i+1); the even layers 0, 2, ... are new language layers with fresh weights.
Token embeddings, time MLP, output head and the backbone are copied unchanged; backbone parts that
read the instruction before the expert (the cpu-demo backbone's grounded keypoints) start fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PolicyConfig
from .policy import APTPolicy, apply_backbone_mode
from .processor import Processor


class ExpansionError(ValueError):
    """The stage-2 config cannot take the stage-1 weights; the message names the field."""


_MUST_MATCH = (
    "chunk_length",
    "action_dim",
    "state_dim",
    "n_action_history",
    "image_size",
    "camera_names",
    "action_space",
)


def expand_to_stage2(stage1: APTPolicy, stage2_cfg: PolicyConfig, seed: int | None = 0) -> APTPolicy:
    """A stage-2 APTPolicy whose odd layers (2i+1) carry the stage-1 layers i exactly."""
    c1 = stage1.cfg
    if c1.stage != 1:
        raise ExpansionError(f"expand_to_stage2 needs a stage-1 policy, got stage {c1.stage}")
    if stage2_cfg.stage != 2:
        raise ExpansionError(f"stage2_cfg.stage must be 2, got {stage2_cfg.stage}")
    for f in _MUST_MATCH:
        if getattr(c1, f) != getattr(stage2_cfg, f):
            raise ExpansionError(
                f"{f} differs: stage 1 has {getattr(c1, f)!r}, stage 2 config {getattr(stage2_cfg, f)!r}"
            )
    for f in ("style", "width", "n_heads", "mlp_ratio", "gate"):
        if getattr(c1.expert, f) != getattr(stage2_cfg.expert, f):
            raise ExpansionError(
                f"expert.{f} differs: stage 1 {getattr(c1.expert, f)!r}, stage 2 {getattr(stage2_cfg.expert, f)!r}"
            )
    for f in ("kind", "model_path", "tap_every", "width", "n_layers", "max_text_len"):
        if getattr(c1.backbone, f) != getattr(stage2_cfg.backbone, f):
            raise ExpansionError(
                f"backbone.{f} differs: stage 1 {getattr(c1.backbone, f)!r}, stage 2 {getattr(stage2_cfg.backbone, f)!r}"
            )
    if seed is not None:
        torch.manual_seed(seed)  # the new language layers' initialisation is reproducible
    s2 = APTPolicy(stage2_cfg)
    if len(s2.expert.layers) != 2 * len(stage1.expert.layers):
        raise ExpansionError(
            f"stage 2 has {len(s2.expert.layers)} layers, expected 2 x {len(stage1.expert.layers)}"
        )
    with torch.no_grad():
        # backbone: same keys (LoRA wraps keep base names); only lora_* keys and the grounded
        # keypoints' neck.ground* (language-conditioned, so stage 2 only) are new
        missing, unexpected = s2.backbone.load_state_dict(stage1.backbone.state_dict(), strict=False)
        if unexpected or any("lora_" not in k and not k.startswith("neck.ground") for k in missing):
            raise ExpansionError(
                f"backbone weights do not transfer: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for i, layer in enumerate(stage1.expert.layers):
            s2.expert.layers[2 * i + 1].load_state_dict(layer.state_dict())
        shared = {k: v for k, v in stage1.expert.state_dict().items() if not k.startswith("layers.")}
        missing, unexpected = s2.expert.load_state_dict(shared, strict=False)
        # new in stage 2: the even layers, token insertion's lang_*, the goal input (goal_in)
        if unexpected or any(not k.startswith(("layers.", "lang_", "goal_in.")) for k in missing):
            raise ExpansionError(
                f"expert weights do not transfer: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    apply_backbone_mode(s2)
    return s2


def widen_keypoints(policy: APTPolicy, keypoints: int, seed: int | None = 0) -> APTPolicy:
    """`policy` with `keypoints` spatial-softmax keypoints per camera and tap instead of its K (cpu-demo
    backbone, vision_tokens "keypoints"; keypoints > K).

    The K keypoints keep their score maps and position embeddings, so their tokens are exactly what
    they were; the new ones get fresh score maps and position embeddings, as a new policy would.
    Every other weight is copied. The expert attends over the extra tokens too, so the actions change
    until a fine-tune has taught it to read them.
    """
    b = policy.cfg.backbone
    if b.kind != "minilm_effnet" or b.vision_tokens != "keypoints":
        raise ExpansionError(
            "widen_keypoints needs a minilm_effnet backbone with vision_tokens 'keypoints', got kind "
            f"{b.kind!r}, vision_tokens {b.vision_tokens!r}"
        )
    if keypoints <= b.keypoints:
        raise ExpansionError(
            "widen_keypoints adds keypoints to a trained policy but cannot take them away: the policy "
            f"has {b.keypoints} per camera and tap, asked for {keypoints}"
        )
    if seed is not None:
        torch.manual_seed(seed)  # the new keypoints' initialisation is reproducible
    wide = APTPolicy(policy.cfg.replace(backbone={"keypoints": keypoints}))
    K, n_cams = b.keypoints, len(policy.cfg.camera_names)
    state = policy.state_dict()
    target = wide.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            if k not in target:
                raise ExpansionError(f"widen_keypoints: {k} has no place in the wider policy")
            t = target[k]
            if k.startswith("backbone.neck.kp."):  # score maps: rows 0..K-1 of K' output channels
                t[:K].copy_(v)
            elif k == "backbone.neck.pos":  # (cams * K, 384): camera c's keypoint k at c * K' + k
                t.view(n_cams, keypoints, -1)[:, :K].copy_(v.view(n_cams, K, -1))
            else:
                t.copy_(v)
    wide.load_state_dict(target)
    _keep_trainable_flags(policy, wide)
    return wide


def add_pointer_coords(policy: APTPolicy, seed: int | None = 0) -> APTPolicy:
    """`policy` (a goal-pointer policy on keypoint tokens) with the pointer's coordinate readout added
    (cfg.goal_pointer_coords, model/pointer.py): every weight copied, the readout fresh, its last
    layer zero, so the policy's goals and actions are exactly what they were until it is trained."""
    return _add_pointer_readout(policy, "goal_pointer_coords", "goal_pointer.coord.", seed)


def add_pointer_pixels(policy: APTPolicy, seed: int | None = 0) -> APTPolicy:
    """`policy` (a goal-pointer policy on keypoint tokens) with the pointer's pixel readout added
    (cfg.goal_pointer_pixels, model/pointer.py), fresh, on the same terms as add_pointer_coords."""
    return _add_pointer_readout(policy, "goal_pointer_pixels", "goal_pointer.pix_", seed)


def _add_pointer_readout(policy: APTPolicy, field: str, prefix: str, seed: int | None) -> APTPolicy:
    """`policy` with the boolean config `field` turned on: every weight copied; the new ones, all
    named `prefix`*, fresh (a readout whose last layer starts at zero)."""
    name = "add_pointer_" + field.removeprefix("goal_pointer_")
    if getattr(policy.cfg, field):
        raise ExpansionError(f"{name}: the policy has {field} already")
    if seed is not None:
        torch.manual_seed(seed)
    try:
        cfg = policy.cfg.replace(**{field: True})
    except ValueError as e:
        raise ExpansionError(f"{name}: {e}") from None
    out = APTPolicy(cfg)
    missing, unexpected = out.load_state_dict(policy.state_dict(), strict=False)
    if unexpected or any(not k.startswith(prefix) for k in missing):
        raise ExpansionError(
            f"{name}: weights do not transfer: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    _keep_trainable_flags(policy, out)
    return out


def _keep_trainable_flags(src: APTPolicy, dst: APTPolicy) -> None:
    """Give `dst` the requires_grad of each parameter `src` has by the same name (what was fixed
    stays fixed); parameters only `dst` has keep theirs."""
    for name, p in src.named_parameters():
        dst.get_parameter(name).requires_grad_(p.requires_grad)


def va_layer_indices(stage1_layers: int) -> list[int]:
    """Stage-2 indices of the layers that came from stage 1 (the VA prior): 1, 3, 5, ..."""
    return [2 * i + 1 for i in range(stage1_layers)]


def freeze_backbone(policy: APTPolicy) -> None:
    """Apply the config's (effective) backbone mode: frozen / LoRA-only / full."""
    apply_backbone_mode(policy)


def train_only(policy: APTPolicy, module: str) -> int:
    """Fix every weight of `policy` except those of its submodule `module` (e.g. "goal_pointer");
    returns how many parameters stay trainable."""
    sub = getattr(policy, module, None)
    if not isinstance(sub, nn.Module):
        raise ValueError(f"the policy has no module {module!r} to train")
    for p in policy.parameters():
        p.requires_grad_(False)
    for p in sub.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in sub.parameters())


def trainable_parameters(policy: nn.Module) -> list[nn.Parameter]:
    """Parameters the optimiser should see (requires_grad)."""
    return [p for p in policy.parameters() if p.requires_grad]


def stage2_from_checkpoint(
    stage1_dir: str | Path, stage2_cfg: PolicyConfig | None = None, **overrides: Any
) -> tuple[APTPolicy, Processor, dict[str, Any]]:
    """Load a stage-1 checkpoint and expand it: (stage-2 policy, the same processor, stage-1 meta).

    `stage2_cfg` defaults to the stage-1 config with stage=2 and `overrides` applied (nested
    configs as dicts, e.g. backbone={"mode": "lora"}). The processor (normalisation statistics)
    carries over unchanged, so stage 2 sees data exactly as stage 1 did.
    """
    from .checkpoint import load_checkpoint

    p1, processor, meta = load_checkpoint(stage1_dir, expect={"stage": 1})
    cfg2 = stage2_cfg or p1.cfg.replace(stage=2, **overrides)
    p2 = expand_to_stage2(p1, cfg2)
    return p2, Processor(cfg2, processor.stats), meta
