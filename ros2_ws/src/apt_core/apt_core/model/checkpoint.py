"""Checkpoints: safetensors weights + JSON config, processor statistics and metadata. No pickles.

Layout of a checkpoint directory:
  model.safetensors   policy weights (a frozen *pretrained* backbone is omitted: it is rebuilt from
                      its shipped/hub weights; random or finetuned backbones are always saved)
  config.json         PolicyConfig.to_dict()
  processor.json      normalisation statistics
  meta.json           stage, backbone, joint_names, action_space, rate_hz, chunk_length, step, ...
The directory is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ConfigError, PolicyConfig
from .policy import APTPolicy
from .processor import Processor

FORMAT_VERSION = 1
FILES = ("model.safetensors", "config.json", "processor.json", "meta.json")


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing files or holds inconsistent content."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit what the caller expects (joints, dims, stage, ...)."""


def _skip_backbone(policy: APTPolicy) -> bool:
    return bool(policy.backbone.pretrained) and policy.cfg.backbone_mode == "frozen"


def policy_state_dict(policy: APTPolicy) -> dict[str, torch.Tensor]:
    sd = policy.state_dict()
    if _skip_backbone(policy):
        sd = {k: v for k, v in sd.items() if not k.startswith("backbone.") or k.startswith("backbone.neck.")}
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(
    path: str | Path, policy: APTPolicy, processor: Processor, metadata: dict[str, Any]
) -> Path:
    """Write a checkpoint directory atomically. `metadata` adds/overrides meta.json fields (e.g. step)."""
    path = Path(path)
    cfg = policy.cfg
    meta = {
        "format_version": FORMAT_VERSION,
        "stage": cfg.stage,
        "variant": cfg.variant,
        "backbone": cfg.backbone.kind,
        "backbone_mode": cfg.backbone_mode,
        "joint_names": list(cfg.joint_names),
        "camera_names": list(cfg.camera_names),
        "action_space": cfg.action_space,
        "action_dim": cfg.action_dim,
        "state_dim": cfg.state_dim,
        "rate_hz": cfg.rate_hz,
        "chunk_length": cfg.chunk_length,
        "step": 0,
        "backbone_weights_in_checkpoint": not _skip_backbone(policy),
    }
    meta.update(metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(policy_state_dict(policy), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        (tmp / "processor.json").write_text(json.dumps(processor.to_dict(), indent=2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: top level must be a JSON object")
    return d


def check_expectations(meta: dict[str, Any], expect: dict[str, Any] | None, where: str) -> None:
    """Raise CheckpointMismatchError naming each expected key whose value differs."""
    problems = []
    for key, want in (expect or {}).items():
        if key not in meta:
            problems.append(f"{key}: checkpoint has no such field (expected {want!r})")
            continue
        have = meta[key]

        def norm(v):
            return list(v) if isinstance(v, (list, tuple)) else v

        if isinstance(want, float) or isinstance(have, float):
            ok = (
                isinstance(have, (int, float))
                and isinstance(want, (int, float))
                and abs(float(have) - float(want)) < 1e-9
            )
        else:
            ok = norm(have) == norm(want)
        if not ok:
            problems.append(f"{key}: checkpoint has {have!r}, expected {want!r}")
    if problems:
        raise CheckpointMismatchError(f"checkpoint {where} does not fit: " + "; ".join(problems))


def load_checkpoint(
    path: str | Path, device: str = "cpu", expect: dict[str, Any] | None = None
) -> tuple[APTPolicy, Processor, dict[str, Any]]:
    """Load (policy in eval mode, processor, meta). Never unpickles: safetensors + JSON only."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    meta = read_json(path / "meta.json")
    check_expectations(meta, expect, str(path))
    try:
        cfg = PolicyConfig.from_dict(read_json(path / "config.json"))
    except ConfigError as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    processor = Processor.from_dict(cfg, read_json(path / "processor.json"))
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"checkpoint file missing: {weights}")
    sd = load_file(str(weights), device="cpu")
    policy = APTPolicy(cfg)
    expected = policy_state_dict(policy)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{weights}: weights do not fit the config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(sd[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointMismatchError(
            f"{weights}: {k} has shape {tuple(sd[k].shape)}, the config builds {tuple(expected[k].shape)}"
        )
    policy.load_state_dict(sd, strict=False)
    policy.to(device).eval()
    return policy, processor, meta
