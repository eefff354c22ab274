"""Open-loop checks of a policy on recorded demonstrations: on a demonstration's frame, how far is
the chunk it predicts from the chunk the demonstrator executed, and does the chunk change when the
image or the instruction is swapped?

These separate policies that all fail in closed loop (docs/results.md, where every variant at the
comparison's budget completes nothing): a lower chunk error on demonstrations from scenes the
policy never saw means a better vision-action mapping, and a chunk that does not move when the
instruction is swapped means the language is ignored. Used by `apt-compare` (held-out table) and
`scripts/diagnose_policy.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apt_core.data.dataset import DemoDataset, decode_stored
from apt_core.types import Observation


@dataclass(frozen=True)
class OpenLoopResult:
    frames: int  # frames measured
    episodes: int  # demonstrations they come from
    chunk_error: float  # mean |predicted - demonstrated chunk| over joints and horizon [rad]
    hold_error: float  # the same for holding still (repeating the frame's state) [rad]
    image_swap: float  # mean |chunk change| when the image is another measured frame's [rad]
    instruction_swap: float  # mean |chunk change| when the instruction is another task's [rad]

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def sample_frames(ds: DemoDataset, n: int, seed: int) -> list[int]:
    """`n` distinct frame indices of `ds` (all of them if it has fewer), drawn from `seed`."""
    if n < 1:
        raise ValueError(f"frames must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(len(ds), min(n, len(ds)), replace=False)]


def demonstrated_chunk(ds: DemoDataset, i: int, horizon: int) -> np.ndarray:
    """The actions of frame i's next `horizon` frames, cut at the end of its episode."""
    end = min(i + horizon, len(ds))
    while end > i + 1 and ds.episode_index[end - 1] != ds.episode_index[i]:
        end -= 1
    return ds.action[i:end]


def open_loop(runner, ds: DemoDataset, idx: list[int]) -> OpenLoopResult:
    """Measure `runner` (a PolicyRunner; its noise restarts on every prediction, so each frame is
    sampled as the first chunk of an episode) on the frames `idx` of `ds`."""
    if not idx:
        raise ValueError("open_loop needs at least one frame")
    if len(ds.tasks) < 2:
        raise ValueError(f"{ds.root}: one instruction only; swapping it needs at least two")
    cam_key = ds.camera_keys[0]
    cam = cam_key.removeprefix("observation.images.")

    def predict(i: int, img: np.ndarray, instruction: str) -> np.ndarray:
        runner.reset()
        obs = Observation(images={cam: img}, joint_positions=ds.state[i].astype(np.float64), stamp=0.0)
        return np.asarray(runner.predict(obs, instruction))

    err, hold, img_swap, lang_swap = [], [], [], []
    for n, i in enumerate(idx):
        img = decode_stored(ds.images[cam_key][i].as_py())
        img2 = decode_stored(ds.images[cam_key][idx[(n + 1) % len(idx)]].as_py())
        k = int(ds.task_index[i])
        task, other = ds.tasks[k], ds.tasks[(k + 1) % len(ds.tasks)]
        gt = demonstrated_chunk(ds, i, runner.chunk_length)
        pred = predict(i, img, task)
        err.append(np.abs(pred[: len(gt)] - gt).mean())
        hold.append(np.abs(gt - ds.state[i]).mean())
        img_swap.append(np.abs(pred - predict(i, img2, task)).mean())
        lang_swap.append(np.abs(pred - predict(i, img, other)).mean())
    return OpenLoopResult(
        frames=len(idx),
        episodes=len({int(ds.episode_index[i]) for i in idx}),
        chunk_error=float(np.mean(err)),
        hold_error=float(np.mean(hold)),
        image_swap=float(np.mean(img_swap)),
        instruction_swap=float(np.mean(lang_swap)),
    )
