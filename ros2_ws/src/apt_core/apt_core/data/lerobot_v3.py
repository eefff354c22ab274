"""LeRobotDataset v3.0 storage: our own writer, reader and layout validator.

Layout (as published by huggingface/lerobot, `CODEBASE_VERSION = "v3.0"`):

    meta/info.json                                  codebase_version, fps, features, path templates
    meta/stats.json                                 per-feature normalisation statistics
    meta/tasks.parquet                              task (string, the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: length, tasks, row range, file
    data/chunk-000/file-000.parquet                 one row per frame, many episodes per file

Images are stored in the data parquet as `dtype: image` (a struct {bytes, path} with PNG bytes, the
Hugging Face `datasets.Image` encoding), not as mp4: decoding a 128x128 PNG takes ~0.1 ms and
random access needs no seeking, which keeps the CPU training loop from waiting on the loader.
The `lerobot` package itself cannot be installed beside torch 2.13.0 (pip resolves it to 0.3.2,
format v2.1), so compatibility is checked by `validate_v3` against the published layout.

The writer builds everything in a hidden sibling folder and renames it into place at the end, so
an interrupted conversion never leaves a folder that looks like a complete dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from apt_core.contract import Contract
from apt_core.data.align import EE_ACTION_NAMES
from apt_core.data.episodes import Episode
from apt_core.data.errors import ConversionError, DatasetFormatError
from apt_core.data.images import decode_stored
from apt_core.data.stats import image_stats, vector_stats
from apt_core.fileio import atomic_write_bytes

CODEBASE_VERSION = "v3.0"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
DEFAULT_CHUNKS_SIZE = 1000  # files per chunk folder (LeRobot default)
DEFAULT_DATA_FILE_MB = 100  # a data file is closed once it exceeds this (LeRobot default)
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
STAT_KEYS = ("mean", "std", "min", "max")
MAX_IMAGE_STAT_FRAMES = 2000  # images decoded for stats (evenly spread over the dataset)


def image_key(camera: str) -> str:
    return f"observation.images.{camera}"


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to touch a non-empty output folder unless `overwrite`; say what is in the way."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"output {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        if (out_dir / INFO_PATH).is_file():
            raise ConversionError(f"output {out_dir} already holds a dataset; pass --overwrite to replace it")
        raise ConversionError(
            f"output {out_dir} is not empty but has no {INFO_PATH} (a partial dataset or other files); "
            "pass --overwrite to replace it"
        )


class DatasetWriter:
    """Append episodes, then `finalize()` (atomic) or `abort()`. Not thread-safe."""

    def __init__(
        self,
        out_dir: Path,
        contract: Contract,
        *,
        image_format: str = "png",
        data_file_mb: float = DEFAULT_DATA_FILE_MB,
        chunks_size: int = DEFAULT_CHUNKS_SIZE,
        extra_meta: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.contract = contract
        self.image_format = image_format
        self.data_file_bytes = int(data_file_mb * 1024 * 1024)
        self.chunks_size = chunks_size
        self.extra_meta = extra_meta or {}
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        J = len(contract.joint_names)
        # ee_pose datasets store 10-D end-effector actions; the others joint targets.
        self.action_names = (
            list(EE_ACTION_NAMES) if contract.action_source == "ee_pose" else list(contract.joint_names)
        )
        A = len(self.action_names)
        fields = [(image_key(c), IMAGE_STRUCT) for c in contract.camera_names]
        fields += [
            ("observation.state", pa.list_(pa.float32(), J)),
            ("action", pa.list_(pa.float32(), A)),
            ("timestamp", pa.float32()),
            ("frame_index", pa.int64()),
            ("episode_index", pa.int64()),
            ("index", pa.int64()),
            ("task_index", pa.int64()),
        ]
        self.schema = pa.schema(fields)
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.image_samples: dict[str, list[bytes]] = {c: [] for c in contract.camera_names}
        self.n_frames = 0
        self.chunk = self.file = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_bytes = 0

    @property
    def n_episodes(self) -> int:
        return len(self.episode_rows)

    def _open_file(self) -> None:
        path = self.tmp / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self._file_bytes = 0

    def _next_file(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        self.file += 1
        if self.file >= self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0

    def add_episode(self, ep: Episode) -> int:
        """Append one episode (one row group); returns its episode_index."""
        n = len(ep.t)
        if n == 0:
            raise ValueError(f"episode from {ep.source} has no frames")
        if self._writer is None:
            self._open_file()
        idx = self.n_episodes
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))
        fps = self.contract.rate_hz
        cols: dict[str, Any] = {}
        for cam in self.contract.camera_names:
            imgs = ep.images[cam]
            cols[image_key(cam)] = pa.StructArray.from_arrays(
                [pa.array(imgs, pa.binary()), pa.nulls(n, pa.string())], fields=list(IMAGE_STRUCT)
            )
            self._file_bytes += sum(len(b) for b in imgs)
        J = len(self.contract.joint_names)
        cols["observation.state"] = pa.FixedSizeListArray.from_arrays(
            pa.array(ep.state.reshape(-1), pa.float32()), J
        )
        A = len(self.action_names)
        if ep.action.shape != (n, A):
            raise ValueError(f"episode from {ep.source}: action shape {ep.action.shape}, expected ({n}, {A})")
        cols["action"] = pa.FixedSizeListArray.from_arrays(pa.array(ep.action.reshape(-1), pa.float32()), A)
        frame = np.arange(n, dtype=np.int64)
        cols["timestamp"] = pa.array((frame / fps).astype(np.float32))
        cols["frame_index"] = pa.array(frame)
        cols["episode_index"] = pa.array(np.full(n, idx, np.int64))
        cols["index"] = pa.array(self.n_frames + frame)
        cols["task_index"] = pa.array(np.full(n, task_index, np.int64))
        self._writer.write_table(pa.table(cols, schema=self.schema))
        self._file_bytes += n * J * 8
        self.episode_rows.append(
            {
                "episode_index": idx,
                "tasks": [ep.task],
                "length": n,
                "data/chunk_index": self.chunk,
                "data/file_index": self.file,
                "dataset_from_index": self.n_frames,
                "dataset_to_index": self.n_frames + n,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                "source/bag": ep.source,
                "source/start_time_ns": int(ep.t[0]),
            }
        )
        self.n_frames += n
        self.states.append(ep.state)
        self.actions.append(ep.action)
        step = max(1, n // 20)  # about 20 frames per episode for image statistics
        for cam in self.contract.camera_names:
            self.image_samples[cam].extend(ep.images[cam][::step])
        if self._file_bytes > self.data_file_bytes:
            self._next_file()
        return idx

    def _stats(self) -> dict[str, Any]:
        state, action = np.concatenate(self.states), np.concatenate(self.actions)
        stats: dict[str, Any] = {"observation.state": vector_stats(state), "action": vector_stats(action)}
        ep_idx = np.concatenate([np.full(r["length"], r["episode_index"]) for r in self.episode_rows])
        frame = np.concatenate([np.arange(r["length"]) for r in self.episode_rows])
        stats["frame_index"] = vector_stats(frame)
        stats["timestamp"] = vector_stats(frame / self.contract.rate_hz)
        stats["episode_index"] = vector_stats(ep_idx)
        stats["index"] = vector_stats(np.arange(self.n_frames))
        task_of_ep = {r["episode_index"]: self.tasks[r["tasks"][0]] for r in self.episode_rows}
        stats["task_index"] = vector_stats(np.array([task_of_ep[int(e)] for e in ep_idx]))
        for cam, samples in self.image_samples.items():
            pick = samples[:: max(1, len(samples) // MAX_IMAGE_STAT_FRAMES)]
            stats[image_key(cam)] = image_stats(np.stack([decode_stored(b) for b in pick]))
        return stats

    def info(self) -> dict[str, Any]:
        c = self.contract
        J = len(c.joint_names)
        features: dict[str, Any] = {
            image_key(cam): {
                "dtype": "image",
                "shape": [c.image_height, c.image_width, 3],
                "names": ["height", "width", "channels"],
            }
            for cam in c.camera_names
        }
        features["observation.state"] = {"dtype": "float32", "shape": [J], "names": list(c.joint_names)}
        features["action"] = {
            "dtype": "float32",
            "shape": [len(self.action_names)],
            "names": self.action_names,
        }
        features.update(DEFAULT_FEATURES)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": c.robot_name,
            "total_episodes": self.n_episodes,
            "total_frames": self.n_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_file_bytes / (1024 * 1024),
            "video_files_size_in_mb": 500,
            "fps": c.rate_hz,
            "splits": {"train": f"0:{self.n_episodes}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": features,
        }

    def finalize(self, overwrite: bool = False) -> Path:
        """Write meta/ and move the finished dataset into place atomically."""
        if self.n_episodes == 0:
            self.abort()
            raise ConversionError("no episodes to write")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        tasks = sorted(self.tasks, key=self.tasks.get)
        tasks_tbl = pa.table(
            {
                "task_index": pa.array([self.tasks[t] for t in tasks], pa.int64()),
                "task": pa.array(tasks, pa.string()),
            }
        )
        tasks_tbl = tasks_tbl.replace_schema_metadata({b"pandas": json.dumps(_pandas_meta()).encode()})
        (self.tmp / "meta").mkdir(parents=True, exist_ok=True)
        pq.write_table(tasks_tbl, self.tmp / TASKS_PATH)
        ep_path = self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), ep_path)
        write_json_atomic(self.tmp / STATS_PATH, self._stats())
        write_json_atomic(
            self.tmp / "meta" / "apt.json", {"contract": self.contract.to_dict(), **self.extra_meta}
        )
        write_json_atomic(self.tmp / INFO_PATH, self.info())  # last: its presence marks completeness
        if self.out_dir.exists():
            check_output_dir(self.out_dir, overwrite)
            trash = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}"
            os.rename(self.out_dir, trash)
            os.rename(self.tmp, self.out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def _pandas_meta() -> dict[str, Any]:
    """pandas metadata so `pd.read_parquet(meta/tasks.parquet)` gives the task strings as the index."""
    return {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }


# ----------------------------------------------------------------------------------------------
# Reading and validation


class V3Dataset:
    """A loaded LeRobot v3 dataset: meta plus the concatenated frame table (images still encoded)."""

    def __init__(
        self, root: Path, info: dict, stats: dict, tasks: list[str], episodes: pa.Table, data: pa.Table
    ) -> None:
        self.root, self.info, self.stats, self.tasks, self.episodes, self.data = (
            root,
            info,
            stats,
            tasks,
            episodes,
            data,
        )

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.info["features"].items() if f["dtype"] in ("image", "video")]


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON: {e}") from None


def load_v3(root: Path | str, validate: bool = True) -> V3Dataset:
    """Read a LeRobot v3 dataset folder (ours or LeRobot's with image features)."""
    root = Path(root)
    info = _load_json(root / INFO_PATH)
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetFormatError(
            f"{root / INFO_PATH}: codebase_version is {info.get('codebase_version')!r}, need {CODEBASE_VERSION!r}"
        )
    for key in ("fps", "features", "data_path", "total_frames", "total_episodes", "chunks_size"):
        if key not in info:
            raise DatasetFormatError(f"{root / INFO_PATH}: missing key {key!r}")
    stats = _load_json(root / STATS_PATH) if (root / STATS_PATH).is_file() else {}
    if not (root / TASKS_PATH).is_file():
        raise DatasetFormatError(f"{root / TASKS_PATH}: missing")
    tt = pq.read_table(root / TASKS_PATH)
    task_col = "task" if "task" in tt.column_names else "__index_level_0__"
    if task_col not in tt.column_names or "task_index" not in tt.column_names:
        raise DatasetFormatError(
            f"{root / TASKS_PATH}: needs columns 'task' (index) and 'task_index', has {tt.column_names}"
        )
    tasks_by_idx = dict(zip(tt["task_index"].to_pylist(), tt[task_col].to_pylist()))
    if sorted(tasks_by_idx) != list(range(len(tasks_by_idx))):
        raise DatasetFormatError(f"{root / TASKS_PATH}: task_index must be 0..{len(tasks_by_idx) - 1}")
    tasks = [tasks_by_idx[i] for i in range(len(tasks_by_idx))]
    ep_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise DatasetFormatError(f"{root / 'meta/episodes'}: no chunk-XXX/file-XXX.parquet files")
    episodes = pa.concat_tables([pq.read_table(p) for p in ep_files], promote_options="default")
    data_files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not data_files:
        raise DatasetFormatError(f"{root / 'data'}: no chunk-XXX/file-XXX.parquet files")
    data = pa.concat_tables([pq.read_table(p) for p in data_files])
    ds = V3Dataset(root, info, stats, tasks, episodes, data)
    if validate:
        problems = validate_v3(ds)
        if problems:
            raise DatasetFormatError(f"{root}: not a valid LeRobot v3 dataset:\n  " + "\n  ".join(problems))
    return ds


def validate_v3(ds: V3Dataset) -> list[str]:
    """Check a loaded dataset against the published v3 layout; returns a list of problems."""
    p: list[str] = []
    info, root = ds.info, ds.root
    feats = info["features"]
    for k in DEFAULT_FEATURES:
        if k not in feats:
            p.append(f"info.json features lacks default feature {k!r}")
    for k, f in feats.items():
        if "/" in k:
            p.append(f"feature name {k!r} contains '/'")
        if not {"dtype", "shape"} <= set(f):
            p.append(f"feature {k!r} needs 'dtype' and 'shape'")
    try:
        DATA_PATH_CHECK = info["data_path"].format(chunk_index=0, file_index=0)
        if not DATA_PATH_CHECK.startswith("data/"):
            p.append(f"data_path {info['data_path']!r} does not point into data/")
    except (KeyError, IndexError) as e:
        p.append(f"data_path template {info['data_path']!r} does not take chunk_index/file_index: {e}")
    if any(f["dtype"] == "video" for f in feats.values()) and not info.get("video_path"):
        p.append("video features but no video_path template")
    expected_cols = {k for k, f in feats.items() if f["dtype"] != "video"}
    cols = set(ds.data.column_names)
    if missing := expected_cols - cols:
        p.append(f"data parquet lacks feature columns {sorted(missing)}")
    if ds.data.num_rows != info["total_frames"]:
        p.append(f"data has {ds.data.num_rows} rows, info.total_frames is {info['total_frames']}")
    for col in (
        "episode_index",
        "tasks",
        "length",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
        "meta/episodes/chunk_index",
        "meta/episodes/file_index",
    ):
        if col not in ds.episodes.column_names:
            p.append(f"meta/episodes lacks column {col!r}")
    if p:
        return p
    eps = ds.episodes.to_pydict()
    n_ep = len(eps["episode_index"])
    if n_ep != info["total_episodes"]:
        p.append(f"meta/episodes has {n_ep} rows, info.total_episodes is {info['total_episodes']}")
    if eps["episode_index"] != list(range(n_ep)):
        p.append("meta/episodes episode_index is not 0..N-1 in order")
    data_ep = ds.data["episode_index"].to_numpy()
    data_frame = ds.data["frame_index"].to_numpy()
    data_index = ds.data["index"].to_numpy()
    if not np.array_equal(data_index, np.arange(ds.data.num_rows)):
        p.append("data column 'index' is not 0..total_frames-1 in row order")
    for e in range(n_ep):
        a, b, n = eps["dataset_from_index"][e], eps["dataset_to_index"][e], eps["length"][e]
        if b - a != n:
            p.append(f"episode {e}: dataset_to_index - dataset_from_index != length")
            continue
        if not np.all(data_ep[a:b] == e):
            p.append(f"episode {e}: rows {a}:{b} do not all have episode_index {e}")
        if not np.array_equal(data_frame[a:b], np.arange(n)):
            p.append(f"episode {e}: frame_index is not 0..{n - 1}")
        f = root / info["data_path"].format(
            chunk_index=eps["data/chunk_index"][e], file_index=eps["data/file_index"][e]
        )
        if not f.is_file():
            p.append(f"episode {e}: data file {f} missing")
        for t in eps["tasks"][e]:
            if t not in ds.tasks:
                p.append(f"episode {e}: task {t!r} not in meta/tasks.parquet")
    ts = ds.data["timestamp"].to_numpy()
    if not np.allclose(ts, data_frame / info["fps"], atol=1e-4):
        p.append("timestamp != frame_index / fps")
    tidx = ds.data["task_index"].to_numpy()
    if tidx.size and (tidx.min() < 0 or tidx.max() >= len(ds.tasks)):
        p.append("task_index out of range of meta/tasks.parquet")
    for k, f in feats.items():
        if f["dtype"] == "image":
            first = ds.data[k][0].as_py() if ds.data.num_rows else None
            if not isinstance(first, dict) or not first.get("bytes"):
                p.append(f"{k}: image cells must be structs with PNG/JPEG 'bytes'")
            elif list(decode_stored(first["bytes"]).shape) != list(f["shape"]):
                p.append(f"{k}: stored image shape differs from features shape {f['shape']}")
        elif (
            f["dtype"] != "video" and k in ds.data.column_names and len(f["shape"]) == 1 and f["shape"][0] > 1
        ):
            width = ds.data[k].type.list_size if pa.types.is_fixed_size_list(ds.data[k].type) else None
            if width is not None and width != f["shape"][0]:
                p.append(f"{k}: column width {width} != features shape {f['shape']}")
        if ds.stats and k in ds.stats:
            for s in STAT_KEYS:
                if s not in ds.stats[k]:
                    p.append(f"stats.json {k!r} lacks {s!r}")
    return p
