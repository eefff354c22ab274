"""PyTorch dataset over a LeRobot v3 folder: (observation, action chunk, instruction) samples.

Sample for frame t of an episode of length N (H = chunk_length, J joints):

    observation.images.<cam>    uint8 (3, H_img, W_img)   decoded from the stored PNG/JPEG
    observation.state           float32 (J,)
    action                      float32 (H, J)   actions[t .. t+H-1] (targets for t+dt .. t+H*dt);
                                                 past the episode end the last action repeats
    action_is_pad               bool (H,)        True where the action was padded
    observation.action_history  float32 (n, J)  actions[t-n .. t-1], clamped to the first action
                                                 (only when n_action_history > 0)
    task                        str
    episode_index, frame_index  int
    goal, goal_valid            float32 (3,), bool   only after set_goals (apt_core.data.goals)
    goal_near                   bool             only after set_goals with `near`

All numeric columns are loaded into numpy once (a few MB); images stay encoded in memory and are
decoded per sample, which costs ~0.1 ms for 128x128 PNG, so workers are rarely needed on CPU.
Augmentation (training only): a random shift of up to `shift` pixels (replicate padding, as in
DrQ / diffusion_policy's crop) and brightness/contrast jitter of +-`jitter`; it draws from torch's
RNG, so a seeded loader gives reproducible samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from apt_core.data.errors import DatasetFormatError
from apt_core.data.images import decode_stored
from apt_core.data.lerobot_v3 import load_v3


class DemoDataset(Dataset):
    """Frames of a LeRobot v3 dataset with action chunks; see the module docstring for the keys."""

    def __init__(
        self,
        root: Path | str,
        chunk_length: int | None = None,
        n_action_history: int = 0,
        augment: bool = False,
        shift: int = 4,
        jitter: float = 0.1,
    ) -> None:
        ds = load_v3(root)
        self.root = Path(root)
        self.meta: dict[str, Any] = ds.info
        self.stats: dict[str, Any] = ds.stats
        feats = ds.info["features"]
        if any(f["dtype"] == "video" for f in feats.values()):
            raise DatasetFormatError(
                f"{root}: video features are not supported by DemoDataset (store images)"
            )
        apt_meta = self.root / "meta" / "apt.json"
        default_h = 16
        self.contract: dict[str, Any] = {}  # the robot contract apt-convert recorded (empty: none)
        if apt_meta.is_file():
            import json

            self.contract = json.loads(apt_meta.read_text())["contract"]
            default_h = int(self.contract["control"]["chunk_length"])
        self.chunk_length = int(chunk_length or default_h)
        if self.chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
        if n_action_history < 0:
            raise ValueError(f"n_action_history must be >= 0, got {n_action_history}")
        self.n_action_history = n_action_history
        self.augment, self.shift, self.jitter = augment, shift, jitter
        d = ds.data
        self.state = _matrix(d, "observation.state")
        self.action = _matrix(d, "action")
        self.episode_index = d["episode_index"].to_numpy().astype(np.int64)
        self.frame_index = d["frame_index"].to_numpy().astype(np.int64)
        self.task_index = d["task_index"].to_numpy().astype(np.int64)
        self.tasks = ds.tasks
        self.camera_keys = ds.camera_keys
        self.images = {k: image_bytes(d[k]) for k in self.camera_keys}
        eps = ds.episodes.to_pydict()
        self.ep_from = np.asarray(eps["dataset_from_index"], np.int64)
        self.ep_to = np.asarray(eps["dataset_to_index"], np.int64)
        self.goals: np.ndarray | None = None  # (N, 3) grounding targets (apt_core.data.goals)
        self.goal_valid: np.ndarray | None = None  # (N,)
        self.goal_near: np.ndarray | None = None  # (N,)

    def set_goals(self, goals: np.ndarray, valid: np.ndarray, near: np.ndarray | None = None) -> None:
        """Attach per-frame grounding targets; samples then carry `goal` (3,) and `goal_valid`, and
        `goal_near` when `near` (frames whose target the tool is already close to) is given."""
        if (
            goals.shape != (len(self), 3)
            or valid.shape != (len(self),)
            or (near is not None and near.shape != (len(self),))
        ):
            shapes = f"goals {goals.shape} / valid {valid.shape}" + (
                "" if near is None else f" / near {near.shape}"
            )
            raise ValueError(f"{shapes} do not fit {len(self)} frames (N, 3) / (N,)")
        self.goals, self.goal_valid = goals.astype(np.float32), valid.astype(bool)
        self.goal_near = None if near is None else near.astype(bool)

    def __len__(self) -> int:
        return len(self.episode_index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} frames")
        i = int(i) % len(self)
        e = int(self.episode_index[i])
        lo, hi = int(self.ep_from[e]), int(self.ep_to[e])
        idx = i + np.arange(self.chunk_length)
        pad = idx >= hi
        sample: dict[str, Any] = {}
        for k in self.camera_keys:
            img = decode_stored(self.images[k][i].as_py())  # (H, W, 3) uint8
            if self.augment:
                img = self._augment(img)
            # HWC -> CHW in numpy: torch's permute().contiguous() on uint8 took ~8 ms per 128x128
            # image here (intra-op threads on a busy machine), numpy's copy ~20 us.
            sample[k] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, H, W)
        sample["observation.state"] = torch.from_numpy(self.state[i].copy())
        sample["action"] = torch.from_numpy(self.action[np.minimum(idx, hi - 1)])  # (H, J)
        sample["action_is_pad"] = torch.from_numpy(pad)
        if self.n_action_history:
            hist = np.maximum(i - self.n_action_history + np.arange(self.n_action_history), lo)
            sample["observation.action_history"] = torch.from_numpy(self.action[hist])  # (n, J)
        if self.goals is not None and self.goal_valid is not None:
            sample["goal"] = torch.from_numpy(self.goals[i].copy())
            sample["goal_valid"] = torch.tensor(bool(self.goal_valid[i]))
            if self.goal_near is not None:
                sample["goal_near"] = torch.tensor(bool(self.goal_near[i]))
        sample["task"] = self.tasks[int(self.task_index[i])]
        sample["episode_index"] = e
        sample["frame_index"] = int(self.frame_index[i])
        return sample

    def _augment(self, img: np.ndarray) -> np.ndarray:
        """Random shift (replicate pad + crop) and brightness/contrast jitter on (H, W, 3) uint8.

        Done in uint8 with OpenCV (border + lookup table): ~20x cheaper than float torch ops per
        sample, and no intra-op threads to fight the training step for cores.
        """
        h, w = img.shape[:2]
        if self.shift > 0:
            s = self.shift
            padded = cv2.copyMakeBorder(img, s, s, s, s, cv2.BORDER_REPLICATE)
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            img = padded[dy : dy + h, dx : dx + w]
        if self.jitter > 0:
            b, c = (1.0 + (torch.rand(2) * 2 - 1) * self.jitter).tolist()
            mean = float(img.mean())
            # ((x - mean) * c + mean) * b, as a table over the 256 possible pixel values
            lut = np.clip((np.arange(256) - mean) * c * b + mean * b, 0, 255).round().astype(np.uint8)
            img = cv2.LUT(img, lut)
        return np.ascontiguousarray(img)


def image_bytes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """One camera's stored PNG/JPEG bytes, left in their parquet chunks (index it: `[i].as_py()`).

    The chunks are not concatenated: an Arrow binary array addresses its bytes with 32-bit offsets,
    so one array holds at most 2 GiB, and a camera column of a large dataset (4763 episodes,
    360k frames of 128x128 PNG) is more than that. Arrow finds a frame's chunk itself.
    """
    return pa.chunked_array([c.field("bytes") for c in column.chunks], pa.binary())


def _matrix(table, key: str) -> np.ndarray:
    col = table[key].combine_chunks()
    if hasattr(col.type, "list_size"):
        return col.flatten().to_numpy().astype(np.float32).reshape(len(col), col.type.list_size)
    return np.asarray(col.to_pylist(), np.float32)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; `task` becomes list[str]; ints become int64 tensors."""
    out: dict[str, Any] = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], str):
            out[k] = vals
        else:
            out[k] = torch.tensor(vals, dtype=torch.int64)
    return out


def make_loader(
    dataset: DemoDataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with our collate; `seed` fixes the shuffle order and augmentation draws."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        generator=g,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
