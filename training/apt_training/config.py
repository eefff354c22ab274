"""Training configuration: a frozen dataclass per run and named presets.

`TrainConfig` holds what a training stage needs besides the policy architecture (which is a
`apt_core.model.config.PolicyConfig` preset): data, optimisation, logging, checkpointing and
evaluation. Presets pair a policy preset with its recipe:

  debug       tiny model, a few hundred steps, seconds to minutes on a laptop CPU (tests, CI)
  cpu-demo    MiniLM + EfficientNet-Lite0 backbone, about an hour on a 2-core CPU
  qwen3vl-2b  the paper's recipe for GPUs (AdamW 1e-4, wd 1e-2, 10k warmup, batch 32 per GPU)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apt_core.data.goals import GOAL_SOURCES


class TrainConfigError(ValueError):
    """A training config field holds an invalid value; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = ""  # LeRobot v3 dataset folder written by `apt-convert` (required)
    out_dir: str = "runs/apt"  # run folder: checkpoints/, metrics.jsonl, plots, report
    preset: str = "debug"  # policy preset (apt_core.model.config.get_preset)
    stage: int = 1  # 1: VA prior | 2: language injection (expands `init_from` when given)
    variant: str = "apt"  # apt | single_stage | knowledge_insulation | token_insertion
    backbone_mode: str = ""  # override the preset's backbone mode in stage 2: frozen | lora | full
    objective: str = ""  # override the preset's objective: ddim | flow
    init_from: str = ""  # stage 2: the stage-1 checkpoint to expand (empty: train stage 2 from scratch)
    # stage 2: a stage-2 checkpoint to go on training (e.g. the shipped policy on new demos): its
    # architecture, weights and normalisation are kept; the optimiser and the schedule start afresh
    finetune_from: str = ""
    steps: int = 200  # optimisation steps of this stage
    batch_size: int = 16  # samples per step (per process under DDP)
    lr: float = 3e-4  # AdamW peak learning rate (paper: 1e-4 at batch 32 per GPU)
    backbone_lr_scale: float = 0.1  # backbone (LoRA/full) lr = lr * this, to protect pretrained features
    weight_decay: float = 1e-2  # AdamW weight decay (paper: 1e-2)
    warmup_steps: int = 20  # linear warm-up, then cosine decay to 10% (paper: 10k warm-up)
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    # > 0: normalized action targets are clipped to +-this before the loss. A joint nearly constant
    # in the statistics (a fine-tune keeps its source's: the default's wrist_2 has std 0.0003 rad)
    # otherwise turns one frame's target hundreds of units out and its loss thousands of times the
    # rest (docs/experiments.md item 39); 0 disables
    action_clip: float = 0.0
    seed: int = 0  # seeds data order, initialisation and diffusion noise
    num_workers: int = 0  # DataLoader worker processes (0: in the training process; exact resume)
    augment: bool = False  # random image shifts/colour jitter in the loader (defeats cache_features)
    # past commanded actions fed to the expert as tokens; -1 keeps the preset's. With history the
    # expert can extrapolate the ongoing motion and learn to ignore the camera and the instruction
    # (the "copycat" shortcut of behaviour cloning); measured on our sim data: see docs/experiments.md
    n_action_history: int = -1
    # vision tokens per camera side for the minilm_effnet backbone (grid x grid); 0 keeps the preset's
    vision_grid: int = 0
    # vision tokens of the minilm_effnet backbone: pooled | keypoints; "" keeps the preset's
    vision_tokens: str = ""
    # keypoint tokens per camera and tap (vision_tokens "keypoints"); 0 keeps the preset's. Stage 2 from
    # a checkpoint with fewer: its keypoints are kept and the rest added fresh (widen_keypoints)
    keypoints: int = 0
    # instruction-queried keypoints per camera and tap (cpu-demo backbone, stage 2; docs/model.md);
    # -1 keeps the preset's (stage 2 from a checkpoint: the stage-1 checkpoint's, i.e. none)
    grounded_keypoints: int = -1
    # auxiliary grounding loss (stage 2): the expert also predicts where the tool will be at the next
    # gripper event, from forward kinematics of the recorded joints (apt_core.data.goals,
    # docs/training.md); this weight x its Huber loss is added to the action loss. 0 disables
    goal_weight: float = 0.0
    goal_urdf: str = ""  # URDF for the goal's forward kinematics; empty = the simulated arm's
    goal_link: str = "tcp"  # the URDF link whose position is the goal (the tool centre point)
    goal_min_distance: float = 0.0  # [m] no goal target for frames whose tool is already this close to it
    # [m] > 0: the start of a push stroke (the shut gripper travelling at least this far at its
    # lowest height) is a key frame too, so a push's goal first says where the object is, for pushes
    # that run shut from the first frame (apt_core.data.goals); the scripted expert shuts the
    # gripper where the stroke starts, which is a key frame anyway
    goal_push_travel: float = 0.0
    # [m] > 0: where a push stroke ends (its frame farthest along, at the lowest height, of a shut
    # run travelling at least this far) is a key frame too. Without it a push's goal during the
    # stroke is wherever the tool is when the gripper opens or the recording stops, which after the
    # scripted push's back-off and rise is often in the air (docs/experiments.md item 37)
    goal_push_end: float = 0.0
    # which joints give the tool position at a key frame: "state" (measured) or "action" (commanded;
    # joint-position actions). The measured tool lags and sags ~1.5 cm off where it was sent
    # (apt_core.data.goals, docs/experiments.md item 36)
    goal_source: str = "state"
    # "predict where, then act" (stage 2, needs goal_weight > 0): the action tokens also get the goal,
    # the recorded one in training and the goal head's prediction when the policy runs (docs/model.md)
    goal_input: bool = False
    # with goal_input: a separate goal pointer (model/pointer.py), trained on the same goal targets,
    # supplies the goal when the policy runs, instead of the goal head on the expert's state token
    goal_pointer: bool = False
    # with goal_pointer, keypoint tokens: the pointer also averages the keypoints' image positions
    # with its attention (model/pointer.py). Fine-tuning a pointer policy without it adds it fresh
    goal_pointer_coords: bool = False
    # with goal_pointer, keypoint tokens: the pointer also points at the EfficientNet maps' pixels
    # (its pixel readout, model/pointer.py). Fine-tuning a pointer policy without it adds it fresh
    goal_pointer_pixels: bool = False
    # with goal_input: [m] a `goal_noise_frac` share of each batch sees its recorded goal moved
    # horizontally by N(0, goal_noise^2) per axis, so the actions learn to tolerate a goal a few cm
    # off (the pointer's error when the policy runs) instead of following it; 0 disables
    goal_noise: float = 0.0
    goal_noise_frac: float = 0.5
    # "" trains what the stage trains; "goal_pointer" (with finetune_from) trains only the goal
    # pointer, on its loss alone: the backbone, its neck and the action expert stay exactly as they
    # were, so the actions given a goal do not change, and a step skips the expert
    train_only: str = ""
    # observe every k-th frame of each episode (at an offset that differs per episode, so every
    # phase is covered); action chunks still come from every frame. The frozen-encoder memo grows
    # with the frames observed, so a stride lets more episodes (more scene layouts) fit in memory
    frame_stride: int = 1
    cache_features: bool = True  # memoise frozen encoder outputs per frame/instruction (cpu-demo backbone)
    # the memo's size cap [GB]; 0 = half the memory available when training starts (per process).
    # Frames past the cap are encoded every time they come (slower, never out of memory)
    cache_features_gb: float = 0.0
    log_every: int = 10  # steps between metric lines in metrics.jsonl
    save_every: int = 100  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 2  # step checkpoints kept besides `final`
    eval_every: int = 0  # steps between in-simulator evaluations; 0 disables
    eval_episodes: int = 4  # episodes per split for periodic evaluation
    eval_splits: tuple[str, ...] = ("in_distribution",)  # splits for periodic evaluation
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True  # show a progress bar

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise TrainConfigError(msg)

        check(self.stage in (1, 2), f"stage must be 1 or 2, got {self.stage}")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.cache_features_gb >= 0, f"cache_features_gb must be >= 0, got {self.cache_features_gb}")
        check(self.n_action_history >= -1, f"n_action_history must be >= -1, got {self.n_action_history}")
        check(self.vision_grid >= 0, f"vision_grid must be >= 0, got {self.vision_grid}")
        check(
            self.vision_tokens in ("", "pooled", "keypoints"),
            f"vision_tokens {self.vision_tokens!r} unknown (pooled | keypoints)",
        )
        check(self.keypoints >= 0, f"keypoints must be >= 0, got {self.keypoints}")
        check(
            self.grounded_keypoints >= -1, f"grounded_keypoints must be >= -1, got {self.grounded_keypoints}"
        )
        check(
            self.stage == 2 or self.grounded_keypoints <= 0,
            "grounded_keypoints read the instruction, so they are a stage-2 option (stage 1 is language-free)",
        )
        check(self.goal_weight >= 0, f"goal_weight must be >= 0, got {self.goal_weight}")
        check(self.action_clip >= 0, f"action_clip must be >= 0 (0 disables), got {self.action_clip}")
        check(self.frame_stride >= 1, f"frame_stride must be >= 1, got {self.frame_stride}")
        check(self.goal_min_distance >= 0, f"goal_min_distance must be >= 0, got {self.goal_min_distance}")
        check(self.goal_push_travel >= 0, f"goal_push_travel must be >= 0 [m], got {self.goal_push_travel}")
        check(
            self.goal_push_travel == 0 or self.goal_weight > 0,
            "goal_push_travel changes the goal targets, so it needs goal_weight > 0",
        )
        check(self.goal_push_end >= 0, f"goal_push_end must be >= 0 [m], got {self.goal_push_end}")
        check(
            self.goal_push_end == 0 or self.goal_weight > 0,
            "goal_push_end changes the goal targets, so it needs goal_weight > 0",
        )
        check(
            self.stage == 2 or self.goal_weight == 0,
            "goal_weight trains a grounding target that depends on the instruction, so it is a stage-2 "
            "option (stage 1 is language-free)",
        )
        check(
            not self.goal_input or self.goal_weight > 0,
            "goal_input feeds the goal head's prediction to the actions, so it needs goal_weight > 0",
        )
        check(
            not self.goal_pointer or self.goal_input,
            "goal_pointer supplies the goal input when the policy runs, so it needs goal_input",
        )
        check(
            self.goal_source in GOAL_SOURCES,
            f"goal_source must be 'state' (measured joints) or 'action' (commanded), got {self.goal_source!r}",
        )
        for name in ("goal_pointer_coords", "goal_pointer_pixels"):
            check(
                not getattr(self, name) or self.goal_pointer,
                f"{name} is a readout of the goal pointer, so it needs goal_pointer",
            )
        check(self.goal_noise >= 0, f"goal_noise must be >= 0 [m], got {self.goal_noise}")
        check(
            0 <= self.goal_noise_frac <= 1, f"goal_noise_frac must be in [0, 1], got {self.goal_noise_frac}"
        )
        check(
            self.goal_noise == 0 or self.goal_input,
            "goal_noise moves the goal the actions see in training, so it needs goal_input",
        )
        check(
            self.train_only in ("", "goal_pointer"), f"train_only {self.train_only!r} unknown (goal_pointer)"
        )
        check(
            self.train_only != "goal_pointer" or (self.goal_pointer and self.finetune_from),
            "train_only goal_pointer trains the goal pointer of a policy that has one: pass --finetune-from "
            "a stage-2 goal-pointer policy and --goal-pointer (with its other goal flags)",
        )
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}")
        check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check(
            self.backbone_mode in ("", "frozen", "lora", "full"),
            f"backbone_mode {self.backbone_mode!r} unknown",
        )
        check(self.objective in ("", "ddim", "flow"), f"objective {self.objective!r} unknown")
        check(
            self.variant in ("apt", "single_stage", "knowledge_insulation", "token_insertion"),
            f"variant {self.variant!r} unknown",
        )
        check(self.stage == 2 or not self.init_from, "init_from is only used by stage 2")
        check(self.stage == 2 or not self.finetune_from, "finetune_from is only used by stage 2")
        check(
            not (self.init_from and self.finetune_from),
            "init_from (a stage-1 prior to expand) and finetune_from (a stage-2 policy to go on "
            "training) exclude each other",
        )
        check(self.stage == 2 or self.variant == "apt", f"variant {self.variant!r} trains in stage 2 only")

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eval_splits"] = list(self.eval_splits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TrainConfigError(f"unknown training config keys: {sorted(unknown)}")
        d = dict(d)
        if "eval_splits" in d:
            d["eval_splits"] = tuple(d["eval_splits"])
        return cls(**d)


# Recipes per policy preset and stage. Stage 2 gets as many steps as stage 1 (the paper trains the
# expanded model jointly; language alignment needs at least as long as the prior).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(preset="debug", steps=200, batch_size=16, lr=1e-3, warmup_steps=20, save_every=100),
    "cpu-demo": dict(
        preset="cpu-demo",
        steps=1500,
        batch_size=32,
        lr=3e-4,
        warmup_steps=100,
        save_every=250,
        num_workers=1,
        # no image augmentation: the frozen-encoder memo keys on exact image bytes, and a randomly
        # shifted/jittered image never repeats, so augmentation would recompute EfficientNet on
        # every sample (the sim camera is fixed; the CPU budget is better spent on epochs)
        augment=False,
        # flow matching, not the preset's DDIM: on our sim data DDIM (epsilon prediction, 10 steps)
        # sampled chunks barely better than predicting zeros, flow fitted them (docs/experiments.md)
        objective="flow",
        # no action-history tokens: with them the expert copied the ongoing motion ("copycat") and,
        # served from rest, predicted holding still (docs/experiments.md, session 2)
        n_action_history=0,
        # spatial-softmax keypoint tokens instead of pooled 8x8 cells: a position probe on our sim
        # located objects to 2.3 cm (median) with them, 4.0 cm with the cells (docs/model.md)
        vision_tokens="keypoints",
        threads=2,
    ),
    "qwen3vl-2b": dict(
        preset="qwen3vl-2b",
        steps=100_000,
        batch_size=32,
        lr=1e-4,
        weight_decay=1e-2,
        warmup_steps=10_000,
        save_every=5000,
        num_workers=8,
        augment=True,
        device="cuda",
        eval_every=5000,
        backbone_mode="lora",
    ),
}


def train_preset(name: str, **overrides: Any) -> TrainConfig:
    """The named training recipe with overrides (e.g. dataset=..., out_dir=..., stage=2)."""
    if name not in TRAIN_PRESETS:
        raise TrainConfigError(f"unknown training preset {name!r}; known: {sorted(TRAIN_PRESETS)}")
    return TrainConfig(**{**TRAIN_PRESETS[name], **overrides})
