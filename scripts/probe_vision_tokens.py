"""Probe: how precisely do the cpu-demo backbone's vision tokens say where the objects are?

A grasp needs the 4 cm cube located to about 1-2 cm. This renders random in-distribution scenes of
the simulator, runs the real cpu-demo backbone (frozen EfficientNet-Lite0 + the trainable neck of
each `vision_tokens` mode), and trains the neck plus a small probe (4 object queries, two
attention layers over the vision tokens of the taps that stage 1 reads, an MLP) to regress the
table (x, y) of each of the 4 objects. Held-out scenes give the error. The action expert has to do
at least this much inside its attention, so a mode whose probe is coarse caps the policy.
Writes the table to section "vision_probe" of docs/benchmarks.md.

With --named it probes grounding instead: given "pick up the <colour> <kind>" for one of the four
objects, locate that one. The probe has one query and reads the instruction's tokens as well, so
it must bind the words to the right vision token inside its attention, as the action expert must
(the policies' dominant failure in closed loop: docs/experiments.md item 14). Compared: the
recipe's tokens, and the same plus instruction-queried `grounded_keypoints`, which bind them in the
backbone. Reports the error and how often the prediction is nearer another object than the named
one. Writes section "grounding_probe".

    python scripts/probe_vision_tokens.py                       # 1000 scenes, 1500 probe steps
    python scripts/probe_vision_tokens.py --scenes 300 --steps 200 --no-write   # a quick look
    python scripts/probe_vision_tokens.py --named --steps 600   # the grounding probe
    python scripts/probe_vision_tokens.py --named --one-instruction --steps 800

With --one-instruction each training scene gets ONE instruction, a random object fixed per scene, as
a demonstration does (its layout then predicts the target on its own). Compared: the probe above,
whose query reads the image, and the policy's goal pointer (apt_core.model.pointer), whose query
reads only the words and the state. Reported on the training scenes (asked for their own object,
and for the other three) and on held-out scenes. Writes section "grounding_one_instruction".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import markdown_table, placeholder_stats, write_section

from apt_core.model.config import get_preset
from apt_core.model.pointer import GoalPointer
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor
from apt_core.sim import tasks as T
from apt_core.sim.env import TabletopEnv

MODES = {  # name -> backbone overrides
    "pooled 4x4 (cpu-demo preset)": {"vision_tokens": "pooled", "vision_grid": 4},
    "pooled 8x8 (recipe before)": {"vision_tokens": "pooled", "vision_grid": 8},
    "keypoints 32 (recipe now)": {"vision_tokens": "keypoints", "keypoints": 32},
    "keypoints 16": {"vision_tokens": "keypoints", "keypoints": 16},
    "keypoints 64": {"vision_tokens": "keypoints", "keypoints": 64},
}
NAMED_MODES = {  # --named: name -> (stage-2 backbone overrides, the probe reads the instruction tokens)
    "keypoints 32 + instruction tokens": ({"vision_tokens": "keypoints", "keypoints": 32}, True),
    "the same + 4 grounded keypoints": (
        {"vision_tokens": "keypoints", "keypoints": 32, "grounded_keypoints": 4},
        True,
    ),
    # the instruction reaches this probe only through the grounded keypoints
    "keypoints 32 + 4 grounded, no instruction tokens": (
        {"vision_tokens": "keypoints", "keypoints": 32, "grounded_keypoints": 4},
        False,
    ),
}


def render_scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W, 3) front-camera images and (n, 4, 2) object (x, y) on the table [m]."""
    env = TabletopEnv()
    names = list(T.OBJECTS)
    images, xy = [], []
    for s in range(seed, seed + n):
        obs = env.reset(seed=s, split="in_distribution")
        images.append(obs.images["front"])
        xy.append([env.body_position(name)[:2] for name in names])
    return np.stack(images), np.asarray(xy, np.float32)


class Probe(nn.Module):
    """Object queries attending over vision tokens -> (x, y) per object."""

    def __init__(self, dim: int, n_objects: int) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.randn(n_objects, dim) * 0.02)
        self.attn1 = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.attn2 = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.head = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, 2))

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q.expand(tokens.shape[0], -1, -1)
        h, _ = self.attn1(q, tokens, tokens, key_padding_mask=padding)
        h2, _ = self.attn2(h + q, tokens, tokens, key_padding_mask=padding)
        return self.head(h + h2)  # (B, n_objects, 2)


TAPS = [1, 3, 5]  # the taps stage 1's three expert layers read (stage 2 adds the others)


class _Setup:
    """What both probes train: the cpu-demo backbone of `mode` (its neck trains, its frozen encoders
    are memoised), a Probe head with `n_out` queries, and one AdamW over the neck and the head."""

    def __init__(
        self, mode: dict, stage: int, n_out: int, images: np.ndarray, seed: int, pointer: bool = False
    ) -> None:
        torch.manual_seed(seed)
        cfg = get_preset("cpu-demo", stage=stage, backbone=mode)
        self.backbone = APTPolicy(cfg).backbone
        self.backbone.enable_feature_cache(max_images=len(images))
        self.proc = Processor.from_stats(cfg, placeholder_stats(7))
        dim = self.backbone.feature_dim
        # the pointer reads the taps it is given (TAPS, in order) and predicts (x, y)
        self.head = GoalPointer(dim, 7, list(range(len(TAPS))), goal_dim=2) if pointer else Probe(dim, n_out)
        params = [p for p in self.backbone.neck.parameters()] + list(self.head.parameters())
        self.opt = torch.optim.AdamW(params, lr=1e-3)
        self.images = images

    def encode(self, idx: np.ndarray, tasks: list[str]):
        """The backbone's output for the rendered scenes `idx` with one instruction each."""
        raw = {
            "observation.state": torch.zeros(len(idx), 7),
            "task": tasks,
            "observation.images.front": torch.from_numpy(self.images[idx].transpose(0, 3, 1, 2).copy()),
        }
        b = self.proc.process_batch(raw, train=False)
        return self.backbone(b["images"], b["lang_ids"], b["lang_mask"])

    def fill_memo(self, encode_batch) -> float:
        """Run `encode_batch(idx)` over all scenes once without gradient (fills the memo outside the
        timed steps); returns the seconds it took."""
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(self.images), 100):
                encode_batch(np.arange(i, min(i + 100, len(self.images))))
        return time.perf_counter() - t0

    def train(self, loss_fn, steps: int) -> float:
        """`steps` AdamW steps on `loss_fn()`; returns milliseconds per step."""
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return 1000 * (time.perf_counter() - t0) / steps


def probe(mode: dict, images: np.ndarray, xy: np.ndarray, n_train: int, steps: int, seed: int) -> dict:
    su = _Setup(mode, 1, xy.shape[1], images, seed)
    backbone, taps = su.backbone, TAPS
    target = torch.from_numpy(xy)

    def predict(idx: np.ndarray) -> torch.Tensor:
        out = su.encode(idx, ["locate the objects"] * len(idx))
        vis = torch.cat([out.features[j][:, : backbone.n_vis] for j in taps], 1)  # (B, 3 * P, 384)
        return su.head(vis)

    rng = np.random.default_rng(seed)

    def loss() -> torch.Tensor:
        idx = rng.integers(0, n_train, 64)
        return (predict(idx) - target[idx]).pow(2).sum(-1).mean()

    warm = su.fill_memo(predict)
    step_ms = su.train(loss, steps)
    with torch.no_grad():
        test = (predict(np.arange(n_train, len(images))) - target[n_train:]).norm(dim=-1) * 100
        train = (predict(np.arange(0, min(n_train, 300))) - target[: min(n_train, 300)]).norm(dim=-1) * 100
    return {
        "tokens": backbone.n_vis * len(taps),
        "test_median": float(test.median()),
        "test_p90": float(test.quantile(0.9)),
        "train_median": float(train.median()),
        "step_ms": step_ms,
        "warm_s": warm,
    }


def probe_named(
    mode: dict, read_text: bool, images: np.ndarray, xy: np.ndarray, n_train: int, steps: int, seed: int
) -> dict:
    """Train the neck + a one-query probe to locate the object an instruction names; test on every
    object of the held-out scenes. Without `read_text` the probe sees the vision and grounded
    tokens only."""
    su = _Setup(mode, 2, 1, images, seed)  # stage 2: grounded keypoints exist only there
    backbone, taps = su.backbone, TAPS
    target = torch.from_numpy(xy)  # (n, 4, 2)
    words = [f"pick up the {e.colour} {e.kind}" for e in T.OBJECTS.values()]

    def predict(idx: np.ndarray, obj: np.ndarray) -> torch.Tensor:  # (B, 2) table (x, y)
        out = su.encode(idx, [words[o] for o in obj])
        n = out.valid_mask.shape[1] if read_text else backbone.n_vis + backbone.n_cams * backbone.n_ground
        tokens = torch.cat([out.features[j][:, :n] for j in taps], 1)  # vision, grounded, instruction
        padding = ~torch.cat([out.valid_mask[:, :n]] * len(taps), 1)
        return su.head(tokens, padding)[:, 0]

    def evaluate(scenes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _locate_errors(predict, target, np.repeat(scenes, 4), np.tile(np.arange(4), len(scenes)))

    rng = np.random.default_rng(seed)

    def loss() -> torch.Tensor:
        idx, obj = rng.integers(0, n_train, 64), rng.integers(0, 4, 64)
        return (predict(idx, obj) - target[idx, obj]).pow(2).sum(-1).mean()

    warm = su.fill_memo(lambda idx: predict(idx, np.zeros(len(idx), int)))
    step_ms = su.train(loss, steps)
    test, wrong = evaluate(np.arange(n_train, len(images)))
    train, _ = evaluate(np.arange(0, min(n_train, 150)))
    return {
        "tokens": (backbone.n_vis + backbone.n_cams * backbone.n_ground) * len(taps),
        "test_median": float(test.median()),
        "test_p90": float(test.quantile(0.9)),
        "wrong": float(wrong.mean()),
        "train_median": float(train.median()),
        "step_ms": step_ms,
        "warm_s": warm,
    }


def _locate_errors(predict, target: torch.Tensor, idx: np.ndarray, obj: np.ndarray):
    """Per (scene idx[i], object obj[i]): error [cm] of predict(idx, obj), and whether another object
    of the scene is nearer the prediction."""
    with torch.no_grad():
        pred = torch.cat([predict(idx[i : i + 100], obj[i : i + 100]) for i in range(0, len(idx), 100)])
    dist = (pred[:, None] - target[idx]).norm(dim=-1)  # (n, 4) to every object
    own = dist[torch.arange(len(idx)), obj]
    return own * 100, (dist.argmin(-1) != torch.from_numpy(obj)).float()


ONE_MODES = {
    "probe (its query reads the image)": False,
    "goal pointer (its query reads words and state only)": True,
}


def probe_one_instruction(
    pointer: bool, images: np.ndarray, xy: np.ndarray, n_train: int, steps: int, seed: int
) -> dict:
    """Train the neck + a locator on scenes that each come with one instruction; test it on the
    training scenes (their own object, the three others) and on held-out scenes (all four)."""
    mode = {"vision_tokens": "keypoints", "keypoints": 32}
    su = _Setup(mode, 2, 1, images, seed, pointer=pointer)
    target = torch.from_numpy(xy)
    words = [f"pick up the {e.colour} {e.kind}" for e in T.OBJECTS.values()]
    named = np.random.default_rng(seed + 1).integers(0, 4, len(images))  # each scene's one instruction

    def predict(idx: np.ndarray, obj: np.ndarray) -> torch.Tensor:  # (B, 2) table (x, y)
        out = su.encode(idx, [words[o] for o in obj])
        if pointer:
            feats = [out.features[j] for j in TAPS]
            return su.head(feats, out.lang_mask, out.valid_mask, torch.zeros(len(idx), 7))
        tokens = torch.cat([out.features[j] for j in TAPS], 1)
        return su.head(tokens, ~torch.cat([out.valid_mask] * len(TAPS), 1))[:, 0]

    rng = np.random.default_rng(seed)

    def loss() -> torch.Tensor:
        idx = rng.integers(0, n_train, 64)
        return (predict(idx, named[idx]) - target[idx, named[idx]]).pow(2).sum(-1).mean()

    warm = su.fill_memo(lambda idx: predict(idx, named[idx]))
    step_ms = su.train(loss, steps)
    seen = np.arange(0, min(n_train, 200))
    others = np.array([o for s in seen for o in range(4) if o != named[s]])
    own, own_wrong = _locate_errors(predict, target, seen, named[seen])
    other, other_wrong = _locate_errors(predict, target, np.repeat(seen, 3), others)
    test_idx = np.arange(n_train, len(images))
    test, test_wrong = _locate_errors(
        predict, target, np.repeat(test_idx, 4), np.tile(np.arange(4), len(test_idx))
    )
    return {
        "own": (float(own.median()), float(own_wrong.mean())),
        "other": (float(other.median()), float(other_wrong.mean())),
        "test": (float(test.median()), float(test_wrong.mean())),
        "step_ms": step_ms,
        "warm_s": warm,
    }


def main_one_instruction(args: argparse.Namespace, images: np.ndarray, xy: np.ndarray, n_train: int) -> None:
    rows = []
    for name, pointer in ONE_MODES.items():
        r = probe_one_instruction(pointer, images, xy, n_train, args.steps, args.seed)
        print(f"{name}: {r}", flush=True)
        rows.append(
            [name, *[f"{r[k][0]:.1f} cm, {100 * r[k][1]:.0f}%" for k in ("own", "other", "test")], f"{r['step_ms']:.0f}"]
        )  # fmt: skip
    table = markdown_table(
        ["locator", "training scenes, their instruction", "training scenes, the other 3 objects",
         "new scenes, all 4 objects", "step [ms]"],
        rows,
    )  # fmt: skip
    body = (
        f"`python scripts/probe_vision_tokens.py --named --one-instruction --scenes {args.scenes} "
        f"--steps {args.steps}`: the neck + a locator trained to find the object named by "
        f'"pick up the <colour> <kind>" in {n_train} rendered scenes that each come with one '
        f"instruction (a random object, fixed per scene), as demonstrations do; tested on up to 200 "
        f"of those scenes and on {args.scenes - n_train} new ones. Each cell: median error, and how "
        f"often another object is nearer the prediction than the named one (guessing: 75%).\n\n{table}\n"
    )
    print(body)
    if not args.no_write:
        section = (
            "grounding_one_instruction",
            "Grounding with one instruction per scene: probe and goal pointer",
        )
        print(f"wrote {write_section(*section, body)}")


def main_named(args: argparse.Namespace, images: np.ndarray, xy: np.ndarray, n_train: int) -> None:
    rows = []
    for name, (mode, read_text) in NAMED_MODES.items():
        if args.only and args.only not in name:
            continue
        r = probe_named(mode, read_text, images, xy, n_train, args.steps, args.seed)
        print(f"{name}: {r}", flush=True)
        rows.append(
            [name, r["tokens"], f"{r['test_median']:.1f}", f"{r['test_p90']:.1f}", f"{100 * r['wrong']:.0f}%",
             f"{r['train_median']:.1f}", f"{r['step_ms']:.0f}"]
        )  # fmt: skip
    table = markdown_table(
        ["vision tokens", "vision tokens (3 taps)", "test median [cm]", "test p90 [cm]",
         "nearer another object", "train median [cm]", "probe step [ms]"],
        rows,
    )  # fmt: skip
    body = (
        f"`python scripts/probe_vision_tokens.py --named --scenes {args.scenes} --steps {args.steps}`: "
        f"the neck + a one-query attention probe that reads the vision tokens and (except in the last "
        f"row) the instruction's tokens, trained to locate the object named by "
        f'"pick up the <colour> <kind>" in {n_train} '
        f"rendered scenes (a random one of the 4 per sample), tested on all 4 objects of "
        f'{args.scenes - n_train} others. "Nearer another object": the prediction is closer to one '
        f"of the 3 other objects than to the named one (guessing: 75%). Grounded keypoints are "
        f"instruction-queried score maps in the backbone (docs/model.md).\n\n{table}\n"
    )
    print(body)
    if not (args.no_write or args.only):  # a partial table is not written
        print(f"wrote {write_section('grounding_probe', 'Grounding probe: locating the named object', body)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=1000, help="rendered scenes (85%% train, 15%% test)")
    ap.add_argument("--steps", type=int, default=1500, help="probe training steps at batch 64")
    ap.add_argument("--seed", type=int, default=10_000, help="first scene seed (the demos use 0..)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--named", action="store_true", help="the grounding probe (locate the named object)")
    ap.add_argument(
        "--one-instruction", action="store_true", help="--named: one instruction per training scene"
    )
    ap.add_argument(
        "--only",
        default="",
        help="run only the modes whose name contains this (the table is then printed, not written)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    images, xy = render_scenes(args.scenes, args.seed)
    n_train = int(0.85 * args.scenes)
    spread = float(np.median(np.linalg.norm(xy[n_train:] - xy[:n_train].mean(0), axis=-1)) * 100)
    print(f"rendered {args.scenes} scenes in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.named and args.one_instruction:
        main_one_instruction(args, images, xy, n_train)
        return
    if args.named:
        main_named(args, images, xy, n_train)
        return
    rows = []
    for name, mode in MODES.items():
        if args.only and args.only not in name:
            continue
        r = probe(mode, images, xy, n_train, args.steps, args.seed)
        print(f"{name}: {r}", flush=True)
        rows.append(
            [name, r["tokens"], f"{r['test_median']:.1f}", f"{r['test_p90']:.1f}", f"{r['train_median']:.1f}",
             f"{r['step_ms']:.0f}"]
        )  # fmt: skip
    table = markdown_table(
        ["vision tokens", "tokens (3 taps)", "test median [cm]", "test p90 [cm]", "train median [cm]",
         "probe step [ms]"],
        rows,
    )  # fmt: skip
    body = (
        f"`python scripts/probe_vision_tokens.py --scenes {args.scenes} --steps {args.steps}"
        f"{f' --only {args.only}' if args.only else ''}`: the "
        f"cpu-demo backbone's neck + an attention probe trained to locate the 4 objects of "
        f"{n_train} rendered scenes, tested on {args.scenes - n_train} others (object position "
        f"spread: {spread:.1f} cm median from the mean). A cube is 4 cm wide; the gripper opens 8 cm.\n\n"
        f"{table}\n"
    )
    print(body)
    if not (args.no_write or args.only):  # a partial table is not written
        print(f"wrote {write_section('vision_probe', 'Vision tokens: object localisation probe', body)}")


if __name__ == "__main__":
    main()
