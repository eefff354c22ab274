"""The paper's comparison in our simulator: same data, same step budget, several seeds.

Variants (APT_METHOD.md, "Baselines the paper compares"):
  single_stage          stage-2 architecture trained end to end from scratch (pi0-like), backbone finetuned
  knowledge_insulation  as single_stage, but no expert gradient reaches the backbone (pi0.5-like;
                        pi0.5 also trains its VLM on discrete action tokens and web data, which this
                        stack does not, so here the backbone is not trained at all)
  apt_frozen            stage 1 (VA prior) -> expand -> stage 2 with the backbone frozen
  apt_finetune          stage 1 -> expand -> stage 2 with the backbone finetuned (LoRA or full)
  token_insertion       stage 1 -> expand -> stage 2 injecting language as expert tokens, not gated fusion
Every variant gets `stage1_steps + stage2_steps` optimisation steps in total; the APT variants of
one seed share one stage-1 run. Each trained policy is evaluated in process on the same scenes
(`apt_core.sim.evaluate`, seeds fixed per split) and the results are pooled over seeds with 95%
Wilson intervals into a markdown table (docs/results.md by default).

    apt-compare --recipe debug --dataset data/sim --out-dir runs/compare --seeds 0 1 2 \
        --stage1-steps 300 --stage2-steps 300 --episodes 10 --results docs/results.md

With `--record N` the command also records the demonstrations first (N scripted demos through the
ROS sim, as apt-pipeline does) and converts them into `--dataset`, so the table comes from one
command; a dataset that exists is used as it is.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from apt_core.fileio import atomic_write_text
from apt_core.model.backbone import backbone_class
from apt_core.model.checkpoint import load_checkpoint
from apt_core.model.config import get_preset
from apt_core.model.runner import PolicyRunner, check_noise_scale
from apt_core.sim.env import check_dataset_scene
from apt_core.sim.evaluate import REACH_RADIUS, EpisodeResult, evaluate, summarize, wilson_interval
from apt_core.sim.tasks import SPLITS

from .config import TRAIN_PRESETS, train_preset
from .loop import feature_cache_budget, train_or_reuse
from .pipeline import PipelineConfig, convert_step, record_step

VARIANTS = ("single_stage", "knowledge_insulation", "apt_frozen", "apt_finetune", "token_insertion")
REFERENCE = "reference"  # the variant name of the --reference checkpoint's rows
HELDOUT_SEED = 9000  # first scene seed of --record-heldout (beyond the evaluation's)


@dataclass(frozen=True)
class CompareConfig:
    dataset: str  # LeRobot v3 dataset folder
    out_dir: str = "runs/compare"  # one folder per variant and seed
    recipe: str = "debug"  # training preset of every run
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds
    stage1_steps: int = 300  # steps of the APT stage 1
    stage2_steps: int = 300  # steps of the APT stage 2; baselines train stage1 + stage2 steps
    # backbone mode of apt_finetune and the end-to-end baselines: full | lora | frozen (a CPU budget:
    # cpu-demo's encoders cannot be trained on a CPU in useful time; then only the three variants
    # that differ without backbone training are run)
    finetune_mode: str = "full"
    variants: tuple[str, ...] = VARIANTS  # which variants to run
    splits: tuple[str, ...] = SPLITS  # evaluation splits
    episodes: int = 10  # evaluation episodes per split and seed
    eval_seed: int = 1000  # first scene seed of the evaluation
    results: str = "docs/results.md"  # markdown report
    threads: int = 0  # torch threads per run (0: default)
    # sampling temperature of every evaluation: 0, as the policy node serves (docs/experiments.md
    # item 25); 1 samples the trained distribution
    noise_scale: float = 0.0
    # a checkpoint evaluated on the same scenes as an extra row (e.g. the shipped default): what the
    # same simulator and protocol give a policy trained far beyond this comparison's budget
    reference: str = ""
    # > 0: first record this many scripted demos (scene seeds record_seed.., through the ROS sim, as
    # apt-pipeline does) into out_dir/demos and convert them into `dataset`, unless it exists
    record: int = 0
    record_seed: int = 0
    record_workers: int = 1  # parallel recorder processes (own ROS domain each)
    # training seeds run in this many processes at once (a seed's variants share its stage 1, so
    # they stay in one process); give each `threads` so that jobs x threads fits the cores
    jobs: int = 1
    # each training's frozen-encoder memo cap [GB]; 0: half the memory available when the comparison
    # starts, shared by the `jobs` processes training at once (each would otherwise take half for itself)
    cache_features_gb: float = 0.0
    # demonstrations from scenes no variant trained on (a LeRobot v3 dataset): each policy's chunk is
    # compared with the demonstrated one on `heldout_frames` of their frames, open loop
    # (apt_core.model.openloop): it separates policies that all fail in closed loop
    heldout: str = ""
    heldout_frames: int = 128
    # > 0: record this many held-out demos first (scene seeds HELDOUT_SEED..) into out_dir/heldout_demos
    # and convert them into out_dir/heldout, which `heldout` then defaults to
    record_heldout: int = 0

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variants {bad}; choose from {VARIANTS}")
        if self.finetune_mode not in ("full", "lora", "frozen"):
            raise ValueError(f"finetune_mode must be full, lora or frozen, got {self.finetune_mode!r}")
        same = {"apt_finetune": "apt_frozen", "knowledge_insulation": "single_stage"}
        if self.finetune_mode == "frozen" and any(v in same for v in self.variants):
            dup = [f"{v} (= {same[v]})" for v in self.variants if v in same]
            raise ValueError(
                f"with finetune_mode 'frozen' no backbone is trained, so {', '.join(dup)} would repeat "
                "another variant; leave them out (--variants single_stage apt_frozen token_insertion)"
            )
        if self.recipe not in TRAIN_PRESETS:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(TRAIN_PRESETS)}")
        check_noise_scale(self.noise_scale)
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if not self.cache_features_gb >= 0:
            raise ValueError(f"cache_features_gb must be >= 0, got {self.cache_features_gb}")
        if self.record < 0 or self.record_workers < 1:
            raise ValueError(
                f"record must be >= 0 and record_workers >= 1, got {self.record}, {self.record_workers}"
            )
        if self.record and self.record_seed + self.record > self.eval_seed:
            raise ValueError(
                f"recorded scene seeds {self.record_seed}..{self.record_seed + self.record - 1} reach the "
                f"evaluation scenes (from {self.eval_seed}): train and evaluate on different scenes"
            )
        if self.record_heldout < 0 or self.heldout_frames < 1:
            raise ValueError(
                f"record_heldout must be >= 0 and heldout_frames >= 1, got {self.record_heldout}, {self.heldout_frames}"
            )
        if (
            self.record_heldout
            and self.record
            and not (
                self.record_seed + self.record <= HELDOUT_SEED
                or self.record_seed >= HELDOUT_SEED + self.record_heldout
            )
        ):
            raise ValueError(
                f"held-out scene seeds {HELDOUT_SEED}..{HELDOUT_SEED + self.record_heldout - 1} overlap the "
                f"recorded training seeds {self.record_seed}..{self.record_seed + self.record - 1}"
            )
        if self.reference and not (Path(self.reference) / "meta.json").is_file():
            raise ValueError(f"reference {self.reference!r} is not a checkpoint folder (no meta.json)")

    @property
    def heldout_path(self) -> str:
        """The held-out dataset: `heldout`, else the one --record-heldout makes, else none."""
        return self.heldout or (str(Path(self.out_dir) / "heldout") if self.record_heldout else "")

    def eval_key(self) -> str:
        """What defines an evaluation: a cached one is reused only when all of it matches (the
        chain protocol is named: caches from before chains came one subtask at a time do not)."""
        return f"{'-'.join(self.splits)}_n{self.episodes}_s{self.eval_seed}_noise{self.noise_scale:g}_chainsubtask"


def _train(cc: CompareConfig, out: Path, seed: int, **kw) -> Path:
    threads = cc.threads or TRAIN_PRESETS[cc.recipe].get("threads", 0)
    if cc.cache_features_gb:
        kw["cache_features_gb"] = cc.cache_features_gb
    cfg = train_preset(
        cc.recipe, dataset=cc.dataset, out_dir=str(out), seed=seed, progress=False, threads=threads, **kw
    )
    return train_or_reuse(cfg)  # the command is resumable as a whole


def train_variant(cc: CompareConfig, variant: str, seed: int) -> Path:
    root = Path(cc.out_dir) / f"seed{seed}"
    total = cc.stage1_steps + cc.stage2_steps
    if variant in ("single_stage", "knowledge_insulation"):
        return _train(
            cc, root / variant, seed, stage=2, variant=variant, steps=total, backbone_mode=cc.finetune_mode
        )
    s1 = _train(cc, root / "apt_stage1", seed, stage=1, steps=cc.stage1_steps)
    kw = dict(stage=2, init_from=str(s1), steps=cc.stage2_steps)
    if variant == "apt_frozen":
        return _train(cc, root / variant, seed, variant="apt", backbone_mode="frozen", **kw)
    if variant == "apt_finetune":
        return _train(cc, root / variant, seed, variant="apt", backbone_mode=cc.finetune_mode, **kw)
    return _train(cc, root / variant, seed, variant="token_insertion", backbone_mode="frozen", **kw)


def _eval_cell(cc: CompareConfig, variant: str, seed: int) -> tuple[list[dict], dict | None]:
    """Train (or reuse) one variant x seed, evaluate it and measure it open loop; both are stored
    next to the checkpoint, so a killed comparison resumes without re-evaluating finished cells."""
    ckpt = train_variant(cc, variant, seed)
    _use_threads(cc)
    digest = checkpoint_digest(ckpt)
    eps = _evaluate_cached(cc, ckpt, ckpt.parent, variant, seed, digest)
    return eps, _openloop_cached(cc, ckpt, ckpt.parent, seed, digest)


def _use_threads(cc: CompareConfig) -> None:
    """Keep a cell's evaluation and open-loop measure to `threads` (its training set them, unless it
    was reused): results depend on the thread count (docs/experiments.md item 27)."""
    if cc.threads:
        import torch

        torch.set_num_threads(cc.threads)


def checkpoint_digest(ckpt: Path) -> str:
    """A digest of a checkpoint's weights and metadata: a cached evaluation belongs to these weights
    (a cell trained on to more steps, or a reference folder replaced, is evaluated again)."""
    h = hashlib.sha1()
    for name in ("meta.json", "model.safetensors"):
        with (Path(ckpt) / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _evaluate_cached(
    cc: CompareConfig, ckpt: Path, store: Path, variant: str, seed: int, digest: str
) -> list[dict]:
    """Evaluate `ckpt` (whose checkpoint_digest is `digest`) on the comparison's scenes, or return
    the episodes stored in `store`."""
    key = f"{cc.eval_key()}_{digest}"
    cache = store / f"eval_{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    if cache.exists():
        return json.loads(cache.read_text())["episodes"]
    policy, processor, meta = load_checkpoint(ckpt)
    runner = PolicyRunner(policy, processor, meta, seed=seed, noise_scale=cc.noise_scale)
    res = evaluate(runner, splits=cc.splits, n_episodes=cc.episodes, seed=cc.eval_seed)
    eps = [{"variant": variant, "train_seed": seed, **ep.__dict__} for ep in res.episodes]
    store.mkdir(parents=True, exist_ok=True)
    # the process that evaluated it: with --jobs, each training seed's own worker
    record = {"key": key, "checkpoint": str(ckpt), "pid": os.getpid(), "episodes": eps}
    atomic_write_text(cache, json.dumps(record))
    return eps


def _openloop_cached(cc: CompareConfig, ckpt: Path, store: Path, seed: int, digest: str) -> dict | None:
    """The open-loop measures of `ckpt` (whose checkpoint_digest is `digest`) on the held-out
    demonstrations (None without them), or the ones stored in `store`."""
    if not cc.heldout_path:
        return None
    heldout = Path(cc.heldout_path).resolve()
    key = f"{heldout}_f{cc.heldout_frames}_noise{cc.noise_scale:g}_{digest}"
    cache = store / f"openloop_{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    if cache.exists():
        return json.loads(cache.read_text())["result"]
    from apt_core.data.dataset import DemoDataset
    from apt_core.model.openloop import open_loop, sample_frames

    policy, processor, meta = load_checkpoint(ckpt)
    runner = PolicyRunner(policy, processor, meta, seed=seed, noise_scale=cc.noise_scale)
    ds = DemoDataset(
        heldout, chunk_length=policy.cfg.chunk_length, n_action_history=policy.cfg.n_action_history
    )
    result = open_loop(runner, ds, sample_frames(ds, cc.heldout_frames, seed=0)).as_dict()
    store.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"key": key, "checkpoint": str(ckpt), "result": result}))
    return result


def _eval_cell_logged(cc: CompareConfig, variant: str, seed: int) -> tuple[list[dict], dict | None]:
    """One cell's evaluation episodes and held-out open-loop measures, with a progress line."""
    t = time.monotonic()
    eps, ol = _eval_cell(cc, variant, seed)
    by_split = {s.split: s for s in summarize([_episode(r) for r in eps])}
    rates = ", ".join(f"{sp}={by_split[sp].rate:.2f}" for sp in cc.splits)
    held = f", held-out chunk error {ol['chunk_error']:.3f} rad" if ol else ""
    print(f"compare: seed {seed} {variant}: {rates}{held} ({time.monotonic() - t:.0f} s)", flush=True)
    return eps, ol


def _eval_seed(cc: CompareConfig, seed: int) -> dict[str, tuple[list[dict], dict | None]]:
    """Every variant of one training seed, in order (a worker process of --jobs)."""
    return {variant: _eval_cell_logged(cc, variant, seed) for variant in cc.variants}


def _record_dataset(cc: CompareConfig, episodes: int, seed: int, demos: str, dataset: Path) -> None:
    """Record `episodes` scripted demos (scene seeds seed..) into out_dir/`demos` and convert them
    into `dataset`, as apt-pipeline does, unless `dataset` is already converted (both steps resume)."""
    if (dataset / "meta" / "info.json").exists():
        return
    pc = PipelineConfig(
        out=cc.out_dir,
        recipe=cc.recipe,
        episodes=episodes,
        seed=seed,
        record_workers=cc.record_workers,
        eval_seed=max(cc.eval_seed, seed + episodes),
    )
    record_step(pc, Path(cc.out_dir) / demos)
    convert_step(Path(cc.out_dir) / demos, dataset)


def shared_memo_budget(cc: CompareConfig, workers: int, meminfo: str = "/proc/meminfo") -> CompareConfig:
    """cc with every training's memo cap set for `workers` processes training at once: each of them
    alone would take half the available memory (item 41's 73k-frame memo grew to 16 GB; three of
    those on a 24 GB machine are killed). An explicit cache_features_gb is kept."""
    if cc.cache_features_gb or workers < 2:
        return cc
    nbytes, why = feature_cache_budget(0.0, workers, meminfo)
    print(
        f"compare: frozen-encoder memo up to {nbytes / 1e9:.1f} GB per training process ({why})", flush=True
    )
    return replace(cc, cache_features_gb=nbytes / 1e9)


def _reference_store(cc: CompareConfig) -> Path:
    """Where the reference's episodes are kept: per checkpoint folder, inside the comparison's."""
    ref = Path(cc.reference).resolve()
    return Path(cc.out_dir) / "reference" / hashlib.sha1(str(ref).encode()).hexdigest()[:12]


def run(cc: CompareConfig) -> Path:
    """Train and evaluate every variant x seed; write per-episode CSV and the markdown report.

    The report is rewritten after every cell (marked partial until all are done), so a long
    comparison shows what it has so far; re-running the same command continues it."""
    if cc.record:
        _record_dataset(cc, cc.record, cc.record_seed, "demos", Path(cc.dataset))
    if cc.record_heldout and not cc.heldout:
        _record_dataset(cc, cc.record_heldout, HELDOUT_SEED, "heldout_demos", Path(cc.heldout_path))
    warning = check_dataset_scene(cc.dataset)  # raises when the data's scene is not this one
    if warning:
        print(f"apt-compare: warning: {warning}", flush=True)
    out = Path(cc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cells = [(seed, variant) for seed in cc.seeds for variant in cc.variants]
    path = Path(cc.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[int, str], list[dict]] = {}
    openloop: dict[tuple[str, int], dict] = {}  # (variant, seed) -> held-out open-loop measures

    def record(seed: int, variant: str, cell: tuple[list[dict], dict | None]) -> None:
        """Keep a finished cell; rewrite the CSV and the (partial) report, rows in cell order."""
        done[(seed, variant)], ol = cell
        if ol is not None:
            openloop[(variant, seed)] = ol
        rows = [r for c in cells if c in done for r in done[c]]
        _write_csv(out / "episodes.csv", rows)
        report = render_report(
            cc, rows, time.monotonic() - t0, done=(len(done), len(cells)), openloop=openloop
        )
        atomic_write_text(path, report)

    if cc.jobs == 1 or len(cc.seeds) == 1:
        for seed, variant in cells:
            record(seed, variant, _eval_cell_logged(cc, variant, seed))
    else:  # one process per training seed, at most `jobs` at once (spawned: torch and EGL are not fork-safe)
        ctx = multiprocessing.get_context("spawn")
        # a fresh process per seed (max_tasks_per_child): each seed's memory goes back when it is done
        workers = min(cc.jobs, len(cc.seeds))
        cc = shared_memo_budget(cc, workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, max_tasks_per_child=1) as pool:
            futures = {pool.submit(_eval_seed, cc, seed): seed for seed in cc.seeds}
            for fut in as_completed(futures):
                for variant, cell in fut.result().items():
                    record(futures[fut], variant, cell)
    rows = [r for cell in cells for r in done[cell]]
    if cc.reference:
        t = time.monotonic()
        _use_threads(cc)
        ref, store = Path(cc.reference), _reference_store(cc)
        digest = checkpoint_digest(ref)
        rows += _evaluate_cached(cc, ref, store, REFERENCE, 0, digest)
        ol = _openloop_cached(cc, ref, store, 0, digest)
        if ol is not None:
            openloop[(REFERENCE, 0)] = ol
        print(f"compare: reference {cc.reference} evaluated ({time.monotonic() - t:.0f} s)", flush=True)
        _write_csv(out / "episodes.csv", rows)
        report = render_report(
            cc, rows, time.monotonic() - t0, done=(len(cells), len(cells)), openloop=openloop
        )
        atomic_write_text(path, report)
    print(path.read_text())
    return path


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def render_report(
    cc: CompareConfig,
    rows: list[dict],
    seconds: float,
    done: tuple[int, int] | None = None,
    openloop: dict[tuple[str, int], dict] | None = None,
) -> str:
    """Markdown: success per variant and split, pooled over seeds, with 95% Wilson intervals, the
    same table for reaching the task object (partial progress, apt_core.sim.evaluate), and one
    row per variant on its grasps (where the gripper shut, and whether it lifted)."""
    success, reached = _table(cc, rows, "success"), _table(cc, rows, "reached")
    record = (
        f"--record {cc.record} --record-seed {cc.record_seed} --record-workers {cc.record_workers} "
        if cc.record
        else ""
    )
    cmd = (
        f"apt-compare --recipe {cc.recipe} {record}--dataset {cc.dataset} --out-dir {cc.out_dir} "
        f"--seeds {' '.join(map(str, cc.seeds))} --stage1-steps {cc.stage1_steps} "
        f"--stage2-steps {cc.stage2_steps} --finetune-mode {cc.finetune_mode} "
        f"--variants {' '.join(cc.variants)} --episodes {cc.episodes} --noise-scale {cc.noise_scale:g}"
        + (f" --reference {cc.reference}" if cc.reference else "")
        + (f" --heldout {cc.heldout}" if cc.heldout else "")
        + (f" --record-heldout {cc.record_heldout}" if cc.record_heldout else "")
        + (f" --heldout-frames {cc.heldout_frames}" if cc.heldout_path else "")
    )
    n = cc.episodes * len(cc.seeds)
    partial = ""
    if done is not None and done[0] < done[1]:
        partial = (
            f"**Partial: {done[0]} of {done[1]} variant x seed cells done** (the table pools the "
            "seeds finished so far; re-run the command to continue).\n\n"
        )
    return (
        "# APT vs baselines in simulation\n\n"
        + partial
        + f"Generated by `{cmd}` ({seconds / 60:.1f} min in the invocation that wrote this; cells "
        "finished by earlier invocations are reused). Success rate per split, pooled over "
        f"{len(cc.seeds)} training seed(s) x {cc.episodes} episodes = {n} episodes per cell, "
        "with 95% Wilson intervals in brackets. Same dataset and total optimisation steps for every "
        f"variant ({cc.stage1_steps + cc.stage2_steps}); APT splits them into stage 1 "
        f"({cc.stage1_steps}) and stage 2 ({cc.stage2_steps}). {_recipe_line(cc.recipe)} "
        "A chain reaches each policy one subtask's words at a time, as the policy node gives them "
        f"(`apt_core.sim.evaluate`, `chain_text`); actions are sampled at noise scale {cc.noise_scale:g}"
        + (" (as the policy node serves them)" if cc.noise_scale == 0 else "")
        + "."
        + _reference_line(cc)
        + " "
        + _backbone_line(cc)
        + "\n\n"
        + success
        + "\n\n"
        f"Partial progress: the share of episodes whose gripper (TCP) came within "
        f"{100 * REACH_RADIUS:.0f} cm of the first subtask's object (or that succeeded), with 95% "
        "Wilson intervals.\n\n"
        + reached
        + "\n\nGrasps, pooled over splits and seeds: episodes whose first subtask is a grasp and "
        "whose gripper was commanded shut; how often another object was nearer the TCP than the named "
        "one at that moment (a grounding error, not an imprecise reach), the median TCP-to-object "
        "distance then, and the episodes that lifted the named object.\n\n"
        + _grasp_table(cc, rows)
        + _openloop_section(cc, openloop or {})
        + "\n\nWhat the training runs behind these numbers measured, and why success is low at this "
        "scale: `docs/experiments.md`.\n"
    )


def _openloop_section(cc: CompareConfig, openloop: dict[tuple[str, int], dict]) -> str:
    """Held-out demonstrations, open loop: one row per variant, the mean over its seeds and each
    seed's value (apt_core.model.openloop)."""
    if not openloop:
        return ""
    any_ol = next(iter(openloop.values()))
    hold = float(np.mean([o["hold_error"] for o in openloop.values()]))
    lines = [
        "\n\nHeld-out demonstrations, open loop: on "
        f"{any_ol['frames']} frames of {any_ol['episodes']} scripted demonstrations from scenes no "
        f"policy trained on (`{cc.heldout_path}`), the mean |predicted chunk - demonstrated chunk| over "
        "joints and horizon, and how much the chunk changes when the image (another of these frames) or "
        "the instruction (another task's) is swapped; mean over training seeds, each seed's in brackets. "
        f"Holding still (repeating the frame's joint state) scores {hold:.3f} rad. Lower chunk error "
        "means a better vision-action mapping; an instruction swap that changes nothing means the words "
        "are ignored (apt_core.model.openloop).\n",
        "| variant | chunk error [rad] | change, image swapped [rad] | change, instruction swapped [rad] |",
        "| --- | --- | --- | --- |",
    ]
    for variant in _rows_order(cc):
        seeds = sorted(s for v, s in openloop if v == variant)
        if not seeds:
            continue

        def cell(measure: str, seeds: list[int] = seeds, variant: str = variant) -> str:
            vals = [openloop[(variant, s)][measure] for s in seeds]
            each = f" ({', '.join(f'{v:.3f}' for v in vals)})" if len(vals) > 1 else ""
            return f"{np.mean(vals):.3f}{each}"

        lines.append(
            f"| {variant} | {cell('chunk_error')} | {cell('image_swap')} | {cell('instruction_swap')} |"
        )
    return "\n".join(lines)


def _reference_line(cc: CompareConfig) -> str:
    if not cc.reference:
        return ""
    return (
        f" The row `{REFERENCE}` is `{cc.reference}`, evaluated once on the same scenes ({cc.episodes} "
        "episodes per cell): not trained on this data or budget, it shows what the same simulator "
        "and protocol give a policy trained far longer (its training report is in its folder)."
    )


def _backbone_line(cc: CompareConfig) -> str:
    """Which variants train the backbone, and what of it (`--finetune-mode`, the recipe's backbone)."""
    train = train_preset(cc.recipe, dataset=cc.dataset)
    bb = get_preset(train.preset).backbone
    trained = [v for v in ("single_stage", "apt_finetune") if v in cc.variants]
    if cc.finetune_mode == "frozen" or not trained:
        return "No variant trains the backbone: every one keeps it frozen."
    cls = backbone_class(bb.kind)
    where = f"the `{cls.lora_scope.rstrip('.')}` part of " if cls.lora_scope else ""
    layers = ", ".join(f"`{t}`" for t in cls.lora_targets)
    what = (
        f"LoRA (rank {bb.lora_rank}) on the {layers} layers of {where}the `{bb.kind}` backbone"
        if cc.finetune_mode == "lora"
        else f"every weight of the `{bb.kind}` backbone"
    )
    verb = "train" if len(trained) > 1 else "trains"
    line = (
        f"{' and '.join(trained)} {verb} {what} with the action loss, at {train.backbone_lr_scale:g} "
        "times the expert's learning rate; the other variants keep it frozen."
    )
    if "knowledge_insulation" in cc.variants:
        line += (
            " knowledge_insulation stops the action loss's gradient at the backbone's features; pi0.5 "
            "then trains its VLM on discrete action tokens and web data, which this stack does not, so "
            "its backbone is not trained at all (it is single-stage with the backbone frozen)."
        )
    return line


def _rows_order(cc: CompareConfig) -> tuple[str, ...]:
    """The table rows: the variants, then the reference checkpoint when there is one."""
    return cc.variants + ((REFERENCE,) if cc.reference else ())


def _recipe_line(recipe: str) -> str:
    """What the recipe trained with, as it stood when the report was written (recipes change)."""
    r = TRAIN_PRESETS[recipe]
    parts = [f"objective {r.get('objective') or 'of the preset'}"]
    parts.append(
        f"action history {'of the preset' if r.get('n_action_history', -1) < 0 else r['n_action_history']}"
    )
    if r.get("vision_tokens"):
        parts.append(f"vision tokens {r['vision_tokens']}")
    if r.get("vision_grid"):
        parts.append(f"vision grid {r['vision_grid']}")
    if r.get("grounded_keypoints", -1) > 0:
        parts.append(f"{r['grounded_keypoints']} grounded keypoints")
    return f"Recipe `{recipe}` at the time: {', '.join(parts)} (apt_training/config.py)."


def _table(cc: CompareConfig, rows: list[dict], measure: str) -> str:
    """One markdown row per variant: `measure` ("success" | "reached") per split, pooled over seeds."""
    lines = ["| variant | " + " | ".join(cc.splits) + " | mean |", "|" + " --- |" * (len(cc.splits) + 2)]
    for variant in _rows_order(cc):
        eps = [_episode(r) for r in rows if r["variant"] == variant]
        if not eps:
            continue
        by_split = {s.split: s for s in summarize(eps)}
        cells, rates = [], []
        for split in cc.splits:
            s = by_split[split]
            k = s.successes if measure == "success" else s.reached
            lo, hi = wilson_interval(k, s.n)
            rates.append(k / s.n)
            cells.append(f"{k / s.n:.2f} [{lo:.2f}, {hi:.2f}]")
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {sum(rates) / len(rates):.2f} |")
    return "\n".join(lines)


def _grasp_table(cc: CompareConfig, rows: list[dict]) -> str:
    """One markdown row per variant: grasps, shut nearer another object, median offset, lifted."""
    lines = [
        "| variant | grasps (gripper shut) | shut nearer another object | median grasp offset | lifted |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant in _rows_order(cc):
        eps = [_episode(r) for r in rows if r["variant"] == variant]
        if not eps:
            continue
        shut = [e for e in eps if not math.isnan(e.grasp_offset)]
        if not shut:  # no grasp shut, or episodes cached before grasps were measured
            lines.append(f"| {variant} | 0 | n/a | n/a | {sum(e.lifted for e in eps)}/{len(eps)} |")
            continue
        wrong = sum(e.wrong_object for e in shut)
        offset = 100 * float(np.median([e.grasp_offset for e in shut]))
        lines.append(
            f"| {variant} | {len(shut)} | {wrong}/{len(shut)} ({100 * wrong / len(shut):.0f}%) "
            f"| {offset:.1f} cm | {sum(e.lifted for e in eps)}/{len(eps)} |"
        )
    return "\n".join(lines)


def _episode(r: dict) -> EpisodeResult:
    fields = EpisodeResult.__dataclass_fields__
    # rows cached before the partial-progress fields existed lack them: the dataclass defaults apply
    return EpisodeResult(**{k: r[k] for k in fields if k in r})


def main(argv: list[str] | None = None) -> None:
    # the console script exits with main's return value: None is status 0 (a Path would be 1)
    p = argparse.ArgumentParser(prog="apt-compare", description=__doc__.splitlines()[0])
    p.add_argument(
        "--dataset",
        required=True,
        help="LeRobot v3 dataset folder (apt-convert); with --record, where the recording is converted to",
    )
    p.add_argument(
        "--record",
        type=int,
        default=0,
        help="first record this many scripted demos through the ROS sim and convert them into --dataset "
        "(skipped when --dataset exists), so that the whole comparison is one command",
    )
    p.add_argument("--record-seed", type=int, default=0, help="first scene seed of the recording")
    p.add_argument(
        "--heldout",
        default="",
        help="a dataset of demonstrations from scenes no variant trained on: adds the open-loop table",
    )
    p.add_argument(
        "--record-heldout",
        type=int,
        default=0,
        help=f"record this many held-out demos first (scene seeds {HELDOUT_SEED}..) for the open-loop table",
    )
    p.add_argument("--heldout-frames", type=int, default=128, help="held-out frames measured per policy")
    p.add_argument("--record-workers", type=int, default=1, help="parallel recorder processes")
    p.add_argument("--out-dir", default="runs/compare")
    p.add_argument("--recipe", default="debug", choices=sorted(TRAIN_PRESETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--stage2-steps", type=int, default=300)
    p.add_argument("--finetune-mode", default="full", choices=["full", "lora", "frozen"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--results", default="docs/results.md")
    p.add_argument("--threads", type=int, default=0, help="torch threads per training and evaluation process")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training seeds run in this many processes at once (each with --threads threads)",
    )
    p.add_argument(
        "--cache-features-gb",
        type=float,
        default=0.0,
        help="each training's frozen-encoder memo cap in GB (0: half the available memory, shared by the --jobs processes)",
    )
    p.add_argument(
        "--noise-scale",
        type=float,
        default=0.0,
        help="sampling temperature of the evaluations (0: as the policy node serves; 1: the trained distribution)",
    )
    p.add_argument(
        "--reference",
        default="",
        help="a checkpoint evaluated on the same scenes as an extra row (e.g. the shipped default policy)",
    )
    a = p.parse_args(argv)
    try:
        cc = _config(a)
    except ValueError as e:
        p.error(str(e))
    run(cc)


def _config(a: argparse.Namespace) -> CompareConfig:
    return CompareConfig(
        dataset=a.dataset,
        out_dir=a.out_dir,
        recipe=a.recipe,
        seeds=tuple(a.seeds),
        stage1_steps=a.stage1_steps,
        stage2_steps=a.stage2_steps,
        finetune_mode=a.finetune_mode,
        variants=tuple(a.variants),
        splits=tuple(a.splits),
        episodes=a.episodes,
        results=a.results,
        threads=a.threads,
        noise_scale=a.noise_scale,
        reference=a.reference,
        record=a.record,
        record_seed=a.record_seed,
        record_workers=a.record_workers,
        jobs=a.jobs,
        cache_features_gb=a.cache_features_gb,
        heldout=a.heldout,
        record_heldout=a.record_heldout,
        heldout_frames=a.heldout_frames,
    )


if __name__ == "__main__":
    main()
