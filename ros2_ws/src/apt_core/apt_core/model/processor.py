"""The processor shared by training and serving: normalisation, image resize/crop, tokenisation.

Training calls `process_batch(raw_batch)` on collated dataset samples (LeRobot v3 keys); serving
calls `process_observation(obs, instruction)`, which builds a raw batch of size 1 and goes through
the very same `process_batch`, so train/serve skew cannot creep in. Statistics (LeRobot v3
`meta/stats.json` format) are stored in the checkpoint as `processor.json`.

Processed batch keys:
  images          (B, C, 3, S, S) float32 in [0, 1], cameras in cfg.camera_names order
  lang_ids        (B, L) int64, lang_mask (B, L) bool        tokenised instruction
  state           (B, state_dim) normalised                  state_raw (B, state_dim) as given
  action_history  (B, n_hist, A) normalised (in the model's action space)
  actions         (B, H, A) normalised (training only)       action_is_pad (B, H) bool
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..types import Observation
from .config import PolicyConfig
from .text import TextTokenizer, build_tokenizer

STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")
EPS = 1e-6


class ProcessorError(ValueError):
    """Bad statistics or a malformed batch/observation; the message names the key and shape."""


def _stat(stats: dict[str, Any], feature: str, key: str, dim: int) -> torch.Tensor:
    if feature not in stats:
        raise ProcessorError(f"stats has no feature {feature!r} (have {sorted(stats)})")
    entry = stats[feature]
    if not isinstance(entry, dict) or key not in entry:
        raise ProcessorError(f"stats[{feature!r}] has no {key!r}")
    t = torch.as_tensor(np.asarray(entry[key], dtype=np.float32)).flatten()
    if t.numel() != dim:
        raise ProcessorError(f"stats[{feature!r}][{key!r}] has {t.numel()} values, expected {dim}")
    if not torch.isfinite(t).all():
        raise ProcessorError(f"stats[{feature!r}][{key!r}] holds non-finite values")
    return t


class Normalizer:
    """mean_std: (x - mean) / std; quantile: q01..q99 -> -1..1 (robust to outliers, as pi0.5)."""

    def __init__(self, mode: str, stats: dict[str, torch.Tensor]) -> None:
        self.mode = mode
        if mode == "mean_std":
            self.offset, self.scale = stats["mean"], stats["std"].clamp(min=EPS)
        else:
            lo, hi = stats["q01"], stats["q99"]
            self.offset, self.scale = (hi + lo) / 2, ((hi - lo) / 2).clamp(min=EPS)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) / self.scale

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x) + self.offset.to(x)


class Processor:
    def __init__(self, cfg: PolicyConfig, stats: dict[str, dict[str, list[float]]]) -> None:
        self.cfg = cfg
        self.stats = stats
        S, A = cfg.state_dim, cfg.action_dim
        st = {k: _stat(stats, "observation.state", k, S) for k in STAT_KEYS}
        if cfg.action_space == "joint_delta" and "action_delta" in stats:
            at = {k: _stat(stats, "action_delta", k, A) for k in STAT_KEYS}
        elif cfg.action_space == "joint_delta":
            # stats.json describes absolute actions; bound the delta a - s by the two ranges (the
            # converter may add an exact "action_delta" entry, which is then used instead)
            ab = {k: _stat(stats, "action", k, A) for k in STAT_KEYS}
            at = {
                "mean": ab["mean"] - st["mean"],
                "std": (ab["std"].pow(2) + st["std"].pow(2)).sqrt(),
                "min": ab["min"] - st["max"],
                "max": ab["max"] - st["min"],
                "q01": ab["q01"] - st["q99"],
                "q99": ab["q99"] - st["q01"],
            }
        else:
            at = {k: _stat(stats, "action", k, A) for k in STAT_KEYS}
        self.state_norm = Normalizer(cfg.norm_mode, st)
        self.action_norm = Normalizer(cfg.norm_mode, at)
        self._tokenizer: TextTokenizer | None = None

    @classmethod
    def from_stats(cls, cfg: PolicyConfig, stats: dict[str, Any]) -> Processor:
        if not isinstance(stats, dict):
            raise ProcessorError(f"stats must be a mapping of feature -> stats, got {type(stats).__name__}")
        return cls(cfg, stats)

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:  # lazy: loading a vocabulary takes ~1 s for Qwen
            self._tokenizer = build_tokenizer(self.cfg.backbone)
        return self._tokenizer

    # ---- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        keep = ("observation.state", "action", "action_delta")
        return {"stats": {k: v for k, v in _jsonable(self.stats).items() if k in keep}}

    @classmethod
    def from_dict(cls, cfg: PolicyConfig, d: dict[str, Any]) -> Processor:
        if not isinstance(d, dict) or "stats" not in d:
            raise ProcessorError("processor.json must be a mapping with a 'stats' key")
        return cls(cfg, d["stats"])

    # ---- images --------------------------------------------------------------------------------
    def _images(
        self, raw: dict[str, Any], B: int, train: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        S = self.cfg.image_size
        out = []
        for cam in self.cfg.camera_names:
            key = f"observation.images.{cam}"
            if key not in raw:
                raise ProcessorError(f"batch is missing {key!r} (cameras: {list(self.cfg.camera_names)})")
            img = torch.as_tensor(raw[key])
            if img.dim() != 4 or img.shape[0] != B or img.shape[1] != 3:
                raise ProcessorError(f"{key} has shape {tuple(img.shape)}, expected ({B}, 3, H, W)")
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            h, w = img.shape[-2:]
            # crop first (random while training, centre while serving) then resize: same geometry
            ch, cw = max(1, round(h * self.cfg.crop_scale)), max(1, round(w * self.cfg.crop_scale))
            if (ch, cw) != (h, w):
                if train:
                    y0 = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                    x0 = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                else:
                    y0, x0 = (h - ch) // 2, (w - cw) // 2
                img = img[..., y0 : y0 + ch, x0 : x0 + cw]
            if img.shape[-2:] != (S, S):
                img = F.interpolate(img, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
            out.append(img.clamp(0, 1))
        return torch.stack(out, 1)  # (B, C, 3, S, S)

    # ---- batches -------------------------------------------------------------------------------
    def process_batch(
        self, raw: dict[str, Any], train: bool = False, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Collated raw samples -> model batch. `train` enables the random crop."""
        cfg = self.cfg
        if "observation.state" not in raw:
            raise ProcessorError("batch is missing 'observation.state'")
        state = torch.as_tensor(raw["observation.state"]).float()
        if state.dim() != 2 or state.shape[1] != cfg.state_dim:
            raise ProcessorError(
                f"observation.state has shape {tuple(state.shape)}, expected (B, {cfg.state_dim})"
            )
        if not torch.isfinite(state).all():
            raise ProcessorError("observation.state holds NaN/inf")
        B = state.shape[0]
        tasks = raw.get("task")
        if tasks is None:
            raise ProcessorError("batch is missing 'task' (list of instructions)")
        if isinstance(tasks, str):
            tasks = [tasks]
        if len(tasks) != B:
            raise ProcessorError(f"'task' has {len(tasks)} entries for a batch of {B}")
        ids, mask = self.tokenizer.encode(list(tasks), cfg.backbone.max_text_len)
        out: dict[str, torch.Tensor] = {
            "images": self._images(raw, B, train, generator),
            "lang_ids": ids,
            "lang_mask": mask,
            "state": self.state_norm(state),
            "state_raw": state,
        }
        if cfg.n_action_history:
            hist = raw.get("observation.action_history")
            if hist is None:
                # no history yet (start of an episode, or a dataset without it): hold the current pose
                hist = (
                    state[:, None, :].expand(B, cfg.n_action_history, cfg.state_dim)
                    if cfg.action_space != "ee_pose"
                    else torch.zeros(B, cfg.n_action_history, cfg.action_dim)
                )
            hist = torch.as_tensor(hist).float()
            if tuple(hist.shape) != (B, cfg.n_action_history, cfg.action_dim):
                raise ProcessorError(
                    f"observation.action_history has shape {tuple(hist.shape)}, expected ({B}, {cfg.n_action_history}, {cfg.action_dim})"
                )
            out["action_history"] = self.action_norm(self._to_model_space(hist, state))
        if "action" in raw:
            act = torch.as_tensor(raw["action"]).float()
            if (
                act.dim() != 3
                or tuple(act.shape[1:]) != (cfg.chunk_length, cfg.action_dim)
                or act.shape[0] != B
            ):
                raise ProcessorError(
                    f"action has shape {tuple(act.shape)}, expected ({B}, {cfg.chunk_length}, {cfg.action_dim})"
                )
            if not torch.isfinite(act).all():
                raise ProcessorError("action holds NaN/inf")
            out["actions"] = self.action_norm(self._to_model_space(act, state))
            pad = raw.get("action_is_pad")
            pad = (
                torch.zeros(B, cfg.chunk_length, dtype=torch.bool)
                if pad is None
                else torch.as_tensor(pad).bool()
            )
            if tuple(pad.shape) != (B, cfg.chunk_length):
                raise ProcessorError(
                    f"action_is_pad has shape {tuple(pad.shape)}, expected ({B}, {cfg.chunk_length})"
                )
            out["action_is_pad"] = pad
        if "goal" in raw:  # grounding targets [m] (apt_core.data.goals), passed through unnormalised
            goal = torch.as_tensor(raw["goal"]).float()
            valid = torch.as_tensor(raw.get("goal_valid", torch.ones(B, dtype=torch.bool))).bool()
            if tuple(goal.shape) != (B, 3) or tuple(valid.shape) != (B,):
                raise ProcessorError(
                    f"goal / goal_valid have shapes {tuple(goal.shape)} / {tuple(valid.shape)}, expected ({B}, 3) / ({B},)"
                )
            out["goal"], out["goal_valid"] = goal, valid
            if "goal_near" in raw:  # frames with a target the tool is already close to (goal pointer only)
                near = torch.as_tensor(raw["goal_near"]).bool()
                if tuple(near.shape) != (B,):
                    raise ProcessorError(f"goal_near has shape {tuple(near.shape)}, expected ({B},)")
                out["goal_near"] = near
        return out

    def _to_model_space(self, act: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Absolute joint targets -> deltas w.r.t. the current state when the model predicts deltas."""
        if self.cfg.action_space == "joint_delta":
            return act - state[:, None, :]
        return act

    def process_observation(
        self, obs: Observation, instruction: str, action_history: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """One Observation (serving) -> model batch of size 1, through process_batch."""
        cfg = self.cfg
        q = np.asarray(obs.joint_positions, dtype=np.float32)
        if q.shape != (cfg.state_dim,):
            raise ProcessorError(f"obs.joint_positions has shape {q.shape}, expected ({cfg.state_dim},)")
        raw: dict[str, Any] = {"observation.state": torch.from_numpy(q)[None], "task": [instruction]}
        for cam in cfg.camera_names:
            if cam not in obs.images:
                raise ProcessorError(f"obs.images has no camera {cam!r} (have {sorted(obs.images)})")
            im = np.asarray(obs.images[cam])
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ProcessorError(
                    f"obs.images[{cam!r}] must be (H, W, 3) uint8, got {im.shape} {im.dtype}"
                )
            raw[f"observation.images.{cam}"] = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[
                None
            ]
        if action_history is not None:
            raw["observation.action_history"] = torch.as_tensor(np.asarray(action_history, dtype=np.float32))[
                None
            ]
        return self.process_batch(raw, train=False)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised model output (…, A) -> the model's action space (absolute, delta or ee pose)."""
        return self.action_norm.inverse(actions)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return np.asarray(x).tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
