"""The training loop shared by both stages: one code path for stage 1, stage 2 and the baselines.

    dataset (LeRobot v3) -> DemoDataset -> Processor.process_batch -> APTPolicy.compute_loss
        -> AdamW (warm-up + cosine) -> checkpoints/step_N (model + train state) -> final/

Resuming: `out_dir/checkpoints/latest.json` names the newest complete checkpoint; it is written
last, after the checkpoint folder and its train state, so a kill at any moment leaves a loadable
state. Re-running the same command continues from it with the same subsequent losses.
Data-parallel: run under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU); rank 0 logs and
saves, every rank trains on its shard of each epoch's permutation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from apt_core.data.dataset import DemoDataset, collate
from apt_core.fileio import atomic_write_text
from apt_core.model.checkpoint import load_checkpoint, save_checkpoint
from apt_core.model.config import PolicyConfig, get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor
from apt_core.model.stages import (
    ExpansionError,
    add_pointer_coords,
    add_pointer_pixels,
    expand_to_stage2,
    train_only,
    widen_keypoints,
)

from .config import TrainConfig, TrainConfigError
from .plots import plot_run
from .state import load_train_state, save_train_state


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """MemAvailable of the machine (Linux), None when it cannot be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def feature_cache_budget(gb: float, processes: int = 1, meminfo: str = "/proc/meminfo") -> tuple[int, str]:
    """(bytes, why) the frozen-encoder memo of one training process may hold: `gb` when > 0, else
    half the memory available now shared by the `processes` on this machine (16 GB when the
    available memory cannot be read)."""
    if gb > 0:
        return int(gb * 1e9), "cache_features_gb"
    avail = available_memory_bytes(meminfo)
    if avail is None:
        return int(16e9), "available memory unknown: 16 GB"
    return int(
        avail / 2 / max(1, processes)
    ), f"half of the {avail / 1e9:.1f} GB available / {processes} process(es)"


def clip_action_targets(batch: dict, clip: float) -> dict:
    """The batch with its normalized action targets clipped to +-clip (TrainConfig.action_clip); as
    it is for clip == 0 or a batch without actions."""
    if clip > 0 and "actions" in batch:
        batch["actions"] = batch["actions"].clamp(-clip, clip)
    return batch


class _LossModule(nn.Module):
    """Wraps compute_loss as forward() so DistributedDataParallel can hook the backward pass."""

    def __init__(self, policy: APTPolicy, cfg: TrainConfig) -> None:
        super().__init__()
        self.policy, self.cfg = policy, cfg

    def forward(self, batch: dict[str, torch.Tensor]):
        c = self.cfg
        if c.train_only == "goal_pointer":
            return self.policy.compute_pointer_loss(batch)
        return self.policy.compute_loss(
            batch, goal_weight=c.goal_weight, goal_noise=c.goal_noise, goal_noise_frac=c.goal_noise_frac
        )


def policy_config_for(cfg: TrainConfig, dataset: DemoDataset) -> PolicyConfig:
    """The preset's architecture, fitted to the dataset's joints, cameras and rate."""
    info = dataset.meta
    joints = dataset_joint_names(dataset)
    overrides: dict[str, Any] = dict(
        stage=cfg.stage,
        variant=cfg.variant,
        joint_names=joints,
        state_dim=len(joints),
        action_dim=len(joints),
        camera_names=tuple(k.removeprefix("observation.images.") for k in dataset.camera_keys),
        rate_hz=float(info.get("fps", 10.0)),
    )
    backbone: dict[str, Any] = {}
    if cfg.backbone_mode:
        backbone["mode"] = cfg.backbone_mode
    if cfg.vision_grid:
        backbone["vision_grid"] = cfg.vision_grid
    if cfg.vision_tokens:
        backbone["vision_tokens"] = cfg.vision_tokens
    if cfg.keypoints:
        backbone["keypoints"] = cfg.keypoints
    if cfg.grounded_keypoints >= 0:
        backbone["grounded_keypoints"] = cfg.grounded_keypoints
    if backbone:
        overrides["backbone"] = backbone
    if cfg.objective:
        overrides["objective"] = {"kind": cfg.objective, "inference_steps": 10}
    if cfg.n_action_history >= 0:
        overrides["n_action_history"] = cfg.n_action_history
    overrides.update(goal_fields(cfg, dataset))
    return get_preset(cfg.preset, **overrides)


def dataset_joint_names(dataset: DemoDataset) -> tuple[str, ...]:
    """Joint order of the dataset's state/action columns (LeRobot v3 feature names)."""
    return tuple(dataset.meta["features"]["observation.state"]["names"])


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 10% of it at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def observed_frames(dataset: DemoDataset, stride: int) -> np.ndarray:
    """Indices of the frames trained on as observations: every frame, or with stride k every k-th
    frame of each episode, starting at offset (episode index mod k)."""
    if stride == 1:
        return np.arange(len(dataset))
    keep = (dataset.frame_index - dataset.episode_index) % stride == 0
    return np.flatnonzero(keep)


def epoch_batches(frames: np.ndarray, cfg: TrainConfig, epoch: int, d: Dist) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation of `frames` (dataset indices), split
    across ranks, full batches only."""
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = frames[torch.randperm(len(frames), generator=g).numpy()].tolist()[d.rank :: d.world]
    nb = len(perm) // cfg.batch_size
    if nb == 0:
        raise ValueError(
            f"{len(frames)} frames to train on, fewer than one batch of {cfg.batch_size} per process"
        )
    return [perm[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(nb)]


def iterate(
    dataset, cfg: TrainConfig, d: Dist, epoch: int, batch_idx: int
) -> Iterator[tuple[int, int, dict]]:
    """Yields (epoch, index of the next batch, raw batch) forever, starting at (epoch, batch_idx)."""
    frames = observed_frames(dataset, cfg.frame_stride)
    while True:
        batches = epoch_batches(frames, cfg, epoch, d)
        # An explicit generator keeps the DataLoader from drawing on the global torch RNG, which
        # holds the diffusion noise stream that resuming must reproduce exactly.
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches[batch_idx:],
            collate_fn=collate,
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
            persistent_workers=False,
        )
        for raw in loader:
            batch_idx += 1
            yield epoch, batch_idx, raw
        epoch, batch_idx = epoch + 1, 0


def _param_groups(policy: APTPolicy, cfg: TrainConfig) -> list[dict[str, Any]]:
    decay, no_decay, backbone = [], [], []
    for name, p in policy.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone.") and not name.startswith("backbone.neck."):
            backbone.append(p)
        elif p.dim() < 2 or "norm" in name or "gate" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": backbone, "weight_decay": cfg.weight_decay, "lr_scale": cfg.backbone_lr_scale},
    ]
    return [g for g in groups if g["params"]] or groups[:1]


def _latest(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / "latest.json"
    if not pointer.exists():
        return None
    folder = ckpt_root / json.loads(pointer.read_text())["folder"]
    return folder if (folder / "train_state.json").exists() else None


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def _check_joints(field: str, path: str, meta: dict[str, Any], dataset: DemoDataset) -> None:
    """The checkpoint that stage 2 starts from (`field` = its TrainConfig field) must have been
    trained on the dataset's joints, in its order."""
    if tuple(meta.get("joint_names", ())) != dataset_joint_names(dataset):
        raise ValueError(
            f"{field} {path} was trained on joints {meta.get('joint_names')}, "
            f"but the dataset has {list(dataset_joint_names(dataset))}"
        )


def finetune_models(cfg: TrainConfig, dataset: DemoDataset) -> tuple[APTPolicy, Processor]:
    """The stage-2 policy of `cfg.finetune_from`, checked against the dataset and the config: the
    same joints, and the goal fields the config would give a new policy (a policy trained without
    a goal input cannot start using one, and the reverse)."""
    policy, processor, meta = load_checkpoint(cfg.finetune_from, expect={"stage": 2})
    _check_joints("finetune_from", cfg.finetune_from, meta, dataset)
    have = {
        "goal_dim": 0,
        "goal_input": False,
        "goal_pointer": False,
        "goal_pointer_state": (),
        "goal_pointer_coords": False,
        "goal_pointer_pixels": False,
    }
    want = {**have, **goal_fields(cfg, dataset)}
    # the goal settings a fine-tune may add: the pointer's readouts (fresh, at zero)
    for field, add in (
        ("goal_pointer_coords", add_pointer_coords),
        ("goal_pointer_pixels", add_pointer_pixels),
    ):
        if want[field] and not getattr(policy.cfg, field) and policy.cfg.goal_pointer:
            try:
                policy = add(policy, seed=cfg.seed)
            except ExpansionError as e:
                raise TrainConfigError(f"finetune_from {cfg.finetune_from}: {e}") from None
            processor = Processor(policy.cfg, processor.stats)
    diff = [
        f"{k}: {getattr(policy.cfg, k)!r} there, {v!r} asked"
        for k, v in want.items()
        if getattr(policy.cfg, k) != v
    ]
    if diff:
        raise ValueError(
            f"finetune_from {cfg.finetune_from} has other goal settings than this config ("
            + "; ".join(diff)
            + "): pass the goal flags it was trained with"
        )
    if cfg.variant != policy.cfg.variant:
        raise ValueError(
            f"finetune_from {cfg.finetune_from} is a {policy.cfg.variant!r} policy, not {cfg.variant!r}"
        )
    return policy, processor


def with_keypoints(cfg: TrainConfig, policy: APTPolicy, processor: Processor) -> tuple[APTPolicy, Processor]:
    """A policy from a checkpoint, widened to `cfg.keypoints` keypoint tokens when it has fewer (its
    own keypoints kept exactly, the added ones fresh); unchanged when cfg.keypoints is 0 or its own."""
    have = policy.cfg.backbone.keypoints
    if not cfg.keypoints or cfg.keypoints == have:
        return policy, processor
    try:  # widen_keypoints refuses a pooled backbone and taking keypoints away, by name
        policy = widen_keypoints(policy, cfg.keypoints, seed=cfg.seed)
    except ExpansionError as e:
        raise TrainConfigError(
            f"keypoints {cfg.keypoints}: {cfg.finetune_from or cfg.init_from}: {e}"
        ) from None
    return policy, Processor(policy.cfg, processor.stats)


def build_models(cfg: TrainConfig, dataset: DemoDataset) -> tuple[APTPolicy, Processor]:
    """A fresh policy for this stage: stage 1 from the preset; stage 2 expanded from `init_from`,
    or `finetune_from` itself (its weights, not reinitialised)."""
    if cfg.stage == 2 and cfg.finetune_from:
        return with_keypoints(cfg, *finetune_models(cfg, dataset))
    if cfg.stage == 2 and cfg.init_from:
        stage1, processor, meta = load_checkpoint(cfg.init_from, expect={"stage": 1})
        _check_joints("init_from", cfg.init_from, meta, dataset)
        changes: dict[str, Any] = {"stage": 2, "variant": cfg.variant}
        backbone: dict[str, Any] = {}
        if cfg.backbone_mode:
            backbone["mode"] = cfg.backbone_mode
        if cfg.grounded_keypoints >= 0:
            backbone["grounded_keypoints"] = cfg.grounded_keypoints
        if backbone:
            changes["backbone"] = backbone
        changes.update(goal_fields(cfg, dataset))
        policy, processor = with_keypoints(
            cfg, expand_to_stage2(stage1, stage1.cfg.replace(**changes)), processor
        )
    else:
        pcfg = policy_config_for(cfg, dataset)
        processor = Processor.from_stats(pcfg, dataset.stats)
        policy = APTPolicy(pcfg)
    if policy.cfg.goal_dim and dataset.goals is not None:
        # start the goal head at the mean target, so its first gradients are about the scene and
        # not about the offset of the robot's workspace from its base
        with torch.no_grad():
            mean = torch.from_numpy(dataset.goals[dataset.goal_valid].mean(0))
            policy.goal_head[-1].bias.copy_(mean / policy.GOAL_SCALE)
            if policy.cfg.goal_pointer:
                policy.goal_pointer.head[-1].bias.copy_(mean / policy.GOAL_SCALE)
    return policy, processor


def goal_fields(cfg: TrainConfig, dataset: DemoDataset) -> dict[str, Any]:
    """The policy's goal fields for cfg (none without a goal weight). The goal pointer reads the
    contract's gripper joint only: it tells the phase (before or after the grasp) without saying
    where the arm is heading."""
    if cfg.goal_weight <= 0:
        return {}
    fields: dict[str, Any] = {"goal_dim": 3, "goal_input": cfg.goal_input, "goal_pointer": cfg.goal_pointer}
    if not cfg.goal_pointer:
        return fields
    from apt_core.data.goals import dataset_gripper_joint

    return {
        **fields,
        "goal_pointer_state": (dataset_gripper_joint(dataset),),
        "goal_pointer_coords": cfg.goal_pointer_coords,
        "goal_pointer_pixels": cfg.goal_pointer_pixels,
    }


def attach_goals(cfg: TrainConfig, dataset: DemoDataset) -> str:
    """Compute the dataset's grounding targets (cfg.goal_weight > 0) and attach them; returns the
    summary line for the log."""
    from apt_core.data.goals import dataset_goals

    urdf = cfg.goal_urdf
    if not urdf:
        from apt_core.sim.env import URDF_PATH

        urdf = str(URDF_PATH)
    goals, valid, info, near = dataset_goals(
        dataset,
        urdf,
        tip_link=cfg.goal_link,
        min_distance=cfg.goal_min_distance,
        push_travel=cfg.goal_push_travel,
        source=cfg.goal_source,
        push_end=cfg.goal_push_end,
    )
    dataset.set_goals(goals, valid, near)
    return f"goals ({Path(urdf).name}, link {cfg.goal_link}, {cfg.goal_source} joints): {info.line()}"


def train(cfg: TrainConfig) -> Path:
    """Train one stage; returns the final checkpoint folder. Re-running resumes where a kill left it."""
    if not cfg.dataset:
        raise ValueError("TrainConfig.dataset is required (a folder written by apt-convert)")
    d = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 (libraries may draw on the legacy global stream)
    out = cfg.out_path
    ckpt_root = out / "checkpoints"
    check_same_run(cfg)
    if d.main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _atomic_json(out / "train_config.json", cfg.to_dict())

    policy_cfg_probe = get_preset(cfg.preset)
    n_hist = policy_cfg_probe.n_action_history if cfg.n_action_history < 0 else cfg.n_action_history
    source = (cfg.init_from or cfg.finetune_from) if cfg.stage == 2 else ""
    if source:  # stage 2 keeps the architecture of the checkpoint it starts from
        n_hist = json.loads((Path(source) / "config.json").read_text()).get("n_action_history", n_hist)
    dataset = DemoDataset(
        cfg.dataset,
        chunk_length=policy_cfg_probe.chunk_length,
        n_action_history=n_hist,
        augment=cfg.augment,
    )
    if cfg.goal_weight > 0:
        line = attach_goals(cfg, dataset)
        if d.main:
            print(f"train: {line}")
    policy, processor = build_models(cfg, dataset)
    step, epoch, batch_idx = 0, 0, 0
    resume = _latest(ckpt_root)
    if resume is not None:
        policy, processor, _ = load_checkpoint(resume)
    if cfg.train_only:  # after a resume too: loading a checkpoint sets the stage's trainable weights
        train_only(policy, cfg.train_only)
    policy.to(cfg.device).train()
    n_obs = len(observed_frames(dataset, cfg.frame_stride))
    if cfg.cache_features and hasattr(policy.backbone, "enable_feature_cache"):
        # Frozen encoders see each frame every epoch: compute them once (exact; see the backbone),
        # as many as fit the budget (the memo of item 41's 73k frames grew to 16 GB and the
        # kernel killed the run on a 24 GB machine).
        # the processes sharing this machine's memory (torchrun sets LOCAL_WORLD_SIZE)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", d.world))
        budget, why = feature_cache_budget(cfg.cache_features_gb, local)
        policy.backbone.enable_feature_cache(
            max_images=n_obs * len(policy.cfg.camera_names), max_bytes=budget
        )
        if d.main:
            print(f"train: frozen-encoder memo up to {budget / 1e9:.1f} GB per process ({why})")
    optimizer = torch.optim.AdamW(_param_groups(policy, cfg), lr=cfg.lr, betas=(0.9, 0.95))
    if resume is not None:
        progress = load_train_state(resume, optimizer)
        step, epoch, batch_idx = progress["step"], progress["epoch"], progress["batch_idx"]
        if d.main:
            print(f"train: resuming from {resume} at step {step}")
    model: nn.Module = _LossModule(policy, cfg)
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    if d.main:
        n_train = policy.num_parameters(trainable_only=True)
        print(
            f"train: stage {cfg.stage} variant {cfg.variant} preset {cfg.preset}: "
            f"{policy.num_parameters() / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable), "
            f"{len(dataset)} samples ({n_obs} observed, frame stride {cfg.frame_stride}), "
            f"{cfg.steps} steps x batch {cfg.batch_size} x {d.world} process(es)"
        )
    bar = None
    if cfg.progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"stage {cfg.stage}", unit="step", dynamic_ncols=True)
    metrics = (out / "metrics.jsonl").open("a") if d.main else None
    data = iterate(dataset, cfg, d, epoch, batch_idx)
    t_start = time.monotonic()
    final = out / "final"
    try:
        while step < cfg.steps:
            epoch, batch_idx, raw = next(data)
            batch = clip_action_targets(
                {
                    k: (v.to(cfg.device) if torch.is_tensor(v) else v)
                    for k, v in processor.process_batch(raw, train=True).items()
                },
                cfg.action_clip,
            )
            lr = lr_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss, info = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip))
                if cfg.grad_clip
                else 0.0
            )
            optimizer.step()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.4f}", lr=f"{lr:.1e}")
            if metrics is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                row = {
                    "kind": "train",
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "time_s": round(time.monotonic() - t_start, 2),
                    **info,
                }
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            if d.main and (step % cfg.save_every == 0 or step == cfg.steps):
                _save_step(cfg, ckpt_root, policy, processor, optimizer, dataset, step, epoch, batch_idx)
            if cfg.eval_every and step % cfg.eval_every == 0 and d.main and metrics is not None:
                row = evaluate_in_sim(policy, processor, dataset, cfg, step)
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                policy.train()
        if d.world > 1:
            _check_replicas_in_sync(policy, d)
        if d.main:
            last = _latest(ckpt_root)
            assert last is not None
            tmp = out / "final.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(last, tmp, ignore=shutil.ignore_patterns("train_state.*"))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            plot_run(out)
            print(f"train: done; final checkpoint {final}")
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
        if d.world > 1:
            dist.barrier()
    return final


def _check_replicas_in_sync(policy: APTPolicy, d: Dist) -> None:
    """All ranks must hold the same weights after DDP training (gradients were all-reduced)."""
    flat = torch.cat([p.detach().double().flatten() for p in policy.parameters()])
    probe = torch.stack(
        [flat.sum(), flat.pow(2).sum(), (flat * torch.arange(flat.numel(), dtype=flat.dtype)).sum()]
    )
    gathered = [torch.zeros_like(probe) for _ in range(d.world)]
    dist.all_gather(gathered, probe)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"DDP replicas diverged: {[g.tolist() for g in gathered]}")
    if d.main:
        print(f"ddp: parameters identical across {d.world} processes")


# Fields that define what a run trains. A folder holding a run with other values is refused instead
# of resumed or reused: a checkpoint of another recipe would otherwise be continued (or returned as
# "final") under the new name. `steps` may change (continue a run for longer or shorter), and so
# may everything about logging, threads and evaluation.
RUN_FIELDS = (
    "dataset",
    "preset",
    "stage",
    "variant",
    "backbone_mode",
    "objective",
    "init_from",
    "finetune_from",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "seed",
    "augment",
    "n_action_history",
    "vision_grid",
    "vision_tokens",
    "keypoints",
    "grounded_keypoints",
    "goal_weight",
    "goal_urdf",
    "goal_link",
    "goal_min_distance",
    "goal_push_travel",
    "goal_push_end",
    "goal_source",
    "goal_input",
    "goal_pointer",
    "goal_pointer_coords",
    "goal_pointer_pixels",
    "goal_noise",
    "goal_noise_frac",
    "train_only",
    "frame_stride",
    "action_clip",
)


def check_same_run(cfg: TrainConfig) -> None:
    """Raise TrainConfigError when cfg.out_dir holds a run whose RUN_FIELDS differ from cfg's."""
    saved_path = cfg.out_path / "train_config.json"
    if not saved_path.exists():
        return
    try:
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text()))
    except (ValueError, TypeError) as e:
        raise TrainConfigError(
            f"{saved_path} is unreadable ({e}); remove {cfg.out_dir} or pick another out_dir"
        ) from e
    diff = [
        f"{k}: {getattr(saved, k)!r} there, {getattr(cfg, k)!r} now"
        for k in RUN_FIELDS
        if getattr(saved, k) != getattr(cfg, k)
    ]
    if diff:
        raise TrainConfigError(
            f"{cfg.out_dir} holds another run ({'; '.join(diff)}); a run only resumes with the same "
            "config: pick another out_dir or remove that one"
        )


def final_step(out_dir: str | Path) -> int | None:
    """The step a run folder's complete `final` checkpoint was trained to; None when it has none."""
    meta = Path(out_dir) / "final" / "meta.json"
    return int(json.loads(meta.read_text()).get("step", -1)) if meta.exists() else None


def train_or_reuse(cfg: TrainConfig) -> Path:
    """The run's final checkpoint: reused when `out_dir/final` is complete, from the same config and
    trained for cfg.steps; trained on from the newest checkpoint when it had fewer steps; else
    trained (and resumed)."""
    final = cfg.out_path / "final"
    done = final_step(cfg.out_path)
    if done is None:
        return train(cfg)  # checks the folder's run itself (resuming needs the same check)
    check_same_run(cfg)
    if done == cfg.steps:
        return final
    if done < cfg.steps:
        return train(cfg)  # a longer run: resumes from the newest checkpoint and writes a new final
    raise TrainConfigError(
        f"{final} was trained for {done} steps, {cfg.steps} asked: its step-{cfg.steps} checkpoint "
        f"(if kept) is under {cfg.out_path / 'checkpoints'}; pick another out_dir for a shorter run"
    )


def checkpoint_metadata(
    cfg: TrainConfig, policy: APTPolicy, dataset: DemoDataset, step: int
) -> dict[str, Any]:
    pc = policy.cfg
    return {
        "stage": pc.stage,
        "variant": pc.variant,
        "backbone": pc.backbone.kind,
        "backbone_mode": pc.backbone_mode,
        "joint_names": list(pc.joint_names),
        "camera_names": list(pc.camera_names),
        "action_space": pc.action_space,
        "rate_hz": pc.rate_hz,
        "chunk_length": pc.chunk_length,
        "step": step,
        "dataset": str(cfg.dataset),
        "dataset_frames": len(dataset),
        "train_config": cfg.to_dict(),
    }


def _save_step(cfg, ckpt_root, policy, processor, optimizer, dataset, step, epoch, batch_idx) -> None:
    folder = ckpt_root / f"step_{step:07d}"
    if folder.exists():
        shutil.rmtree(folder)
    save_checkpoint(folder, policy, processor, checkpoint_metadata(cfg, policy, dataset, step))
    save_train_state(folder, optimizer, {"step": step, "epoch": epoch, "batch_idx": batch_idx})
    _atomic_json(ckpt_root / "latest.json", {"folder": folder.name, "step": step})
    kept = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in kept[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def evaluate_in_sim(policy: APTPolicy, processor: Processor, dataset, cfg: TrainConfig, step: int) -> dict:
    """Success rates of the current weights in the simulator (in process, no ROS)."""
    from apt_core.model.runner import PolicyRunner
    from apt_core.sim.evaluate import evaluate

    policy.eval()
    runner = PolicyRunner(policy, processor, {"joint_names": list(policy.cfg.joint_names)})
    res = evaluate(runner, splits=list(cfg.eval_splits), n_episodes=cfg.eval_episodes, seed=10_000 + cfg.seed)
    row: dict[str, Any] = {"kind": "eval", "step": step, "eval_seconds": round(res.seconds, 1)}
    for s in res.summary:
        row[f"success/{s.split}"] = s.rate
    return row
