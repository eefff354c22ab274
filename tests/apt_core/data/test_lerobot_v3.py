"""Our output against the published LeRobotDataset v3.0 layout, checked with our own reader.

`lerobot` cannot be installed beside torch 2.13.0 (pip resolves it to 0.3.2, dataset format v2.1,
and it needs torchvision), so the layout facts below are taken from huggingface/lerobot's
`src/lerobot/datasets/utils.py` (v3.0): INFO_PATH, STATS_PATH, DEFAULT_TASKS_PATH,
DEFAULT_EPISODES_PATH, DEFAULT_DATA_PATH, DEFAULT_FEATURES, and the episodes columns that
`LeRobotDataset` reads (dataset_from_index, dataset_to_index, data/chunk_index, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from apt_core.contract import load_contract
from apt_core.data.convert import convert
from apt_core.data.episodes import Episode
from apt_core.data.errors import DatasetFormatError
from apt_core.data.images import encode_image
from apt_core.data.lerobot_v3 import DatasetWriter, load_v3
from apt_core.data.synthetic import write_synthetic_bag

# Published v3.0 constants (lerobot/datasets/utils.py)
PUBLISHED = {
    "info": "meta/info.json",
    "stats": "meta/stats.json",
    "tasks": "meta/tasks.parquet",
    "episodes": "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
    "data": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("v3")
    c = load_contract()
    write_synthetic_bag(tmp / "bags" / "a", c, 12, "pick", instruction_changes=[(5, "place")])
    write_synthetic_bag(tmp / "bags" / "b", c, 7, "pick", seed=1)
    convert(tmp / "bags", tmp / "ds", c)
    return tmp / "ds"


def test_files_at_published_paths(dataset: Path) -> None:
    for key in ("info", "stats", "tasks"):
        assert (dataset / PUBLISHED[key]).is_file(), key
    assert (dataset / PUBLISHED["episodes"].format(chunk_index=0, file_index=0)).is_file()
    assert (dataset / PUBLISHED["data"].format(chunk_index=0, file_index=0)).is_file()
    assert not list(dataset.rglob("*.tmp"))


def test_info_json(dataset: Path) -> None:
    info = json.loads((dataset / PUBLISHED["info"]).read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == PUBLISHED["data"]
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 19, 2)
    assert info["fps"] == 10.0 and info["chunks_size"] == 1000 and info["splits"] == {"train": "0:3"}
    f = info["features"]
    for k, dtype in [
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("episode_index", "int64"),
        ("index", "int64"),
        ("task_index", "int64"),
    ]:
        assert f[k] == {"dtype": dtype, "shape": [1], "names": None}
    assert f["observation.images.front"] == {
        "dtype": "image",
        "shape": [128, 128, 3],
        "names": ["height", "width", "channels"],
    }
    assert f["observation.state"]["shape"] == [7] and f["action"]["names"] == list(
        load_contract().joint_names
    )


def test_tasks_episodes_and_data_tables(dataset: Path) -> None:
    tasks = pq.read_table(dataset / PUBLISHED["tasks"])
    assert tasks.to_pydict() == {"task_index": [0, 1], "task": ["pick", "place"]}
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == [
        "task"
    ]  # pd.read_parquet gives the task as the index, as LeRobot expects
    eps = pq.read_table(dataset / PUBLISHED["episodes"].format(chunk_index=0, file_index=0)).to_pydict()
    assert eps["episode_index"] == [0, 1, 2] and eps["length"] == [5, 7, 7]
    assert eps["dataset_from_index"] == [0, 5, 12] and eps["dataset_to_index"] == [5, 12, 19]
    assert eps["tasks"] == [["pick"], ["place"], ["pick"]]
    data = pq.read_table(dataset / PUBLISHED["data"].format(chunk_index=0, file_index=0))
    assert data["index"].to_pylist() == list(range(19))
    assert data["frame_index"].to_pylist()[:7] == [0, 1, 2, 3, 4, 0, 1]
    np.testing.assert_allclose(data["timestamp"].to_numpy()[5:8], [0.0, 0.1, 0.2], atol=1e-6)
    cell = data["observation.images.front"][0].as_py()
    assert set(cell) == {"bytes", "path"} and cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_json(dataset: Path) -> None:
    stats = json.loads((dataset / PUBLISHED["stats"]).read_text())
    state = np.asarray(load_v3(dataset).data["observation.state"].to_pylist())
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["q99"], np.quantile(state, 0.99, axis=0), atol=1e-6)
    for k in ("mean", "std", "min", "max", "q01", "q99"):
        assert len(stats["action"][k]) == 7
        assert np.asarray(stats["observation.images.front"][k]).shape == (3, 1, 1)
    assert (
        0.0
        <= stats["observation.images.front"]["min"][0][0][0]
        <= stats["observation.images.front"]["max"][0][0][0]
        <= 1.0
    )


def test_validator_catches_layout_errors(dataset: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    info = json.loads((bad / "meta/info.json").read_text())
    info["total_frames"] = 20
    (bad / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match="data has 19 rows, info.total_frames is 20"):
        load_v3(bad)
    info["total_frames"], info["codebase_version"] = 19, "v2.1"
    (bad / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match="codebase_version is 'v2.1', need 'v3.0'"):
        load_v3(bad)
    (bad / "meta/tasks.parquet").unlink()
    info["codebase_version"] = "v3.0"
    (bad / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match="tasks.parquet: missing"):
        load_v3(bad)


def test_data_files_roll_over_by_size(tmp_path: Path) -> None:
    """Episodes spread over several data files once a file exceeds data_files_size_in_mb."""
    c = load_contract()
    w = DatasetWriter(tmp_path / "ds", c, data_file_mb=0.0001)  # ~100 bytes: every episode gets a new file
    png = encode_image(np.zeros((128, 128, 3), np.uint8))
    for e in range(3):
        w.add_episode(
            Episode(
                source="x",
                task="t",
                t=np.arange(4, dtype=np.int64),
                state=np.full((4, 7), e, np.float32),
                action=np.zeros((4, 7), np.float32),
                images={"front": [png] * 4},
            )
        )
    w.finalize()
    ds = load_v3(tmp_path / "ds")
    assert sorted(p.name for p in (tmp_path / "ds/data/chunk-000").iterdir()) == [
        "file-000.parquet",
        "file-001.parquet",
        "file-002.parquet",
    ]
    assert ds.episodes["data/file_index"].to_pylist() == [0, 1, 2]
    assert np.asarray(ds.data["observation.state"].to_pylist())[:, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
