"""Manual check: load a converted dataset the way `lerobot` v3 does, with pandas + HF `datasets`.

Neither is in the project venv (lerobot itself cannot be installed beside torch 2.13.0), so this is
not a pytest test; run it in a throwaway venv:

    python3.11 -m venv /tmp/compat && /tmp/compat/bin/pip install pandas datasets pillow
    /tmp/compat/bin/python tests/apt_core/data/lerobot_compat_check.py DATASET_DIR

It mirrors lerobot's `load_tasks` (pd.read_parquet, task string as the index), `load_episodes`
(datasets.Dataset.from_parquet) and `load_nested_dataset` with `get_hf_features_from_features`
(image columns as datasets.Image, vectors as Sequence(length=...)), and exits non-zero on a mismatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: Path) -> int:
    import datasets
    import pandas as pd

    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0", info["codebase_version"]
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"], tasks
    eps = datasets.Dataset.from_parquet(str(next((root / "meta/episodes").glob("chunk-*/file-*.parquet"))))
    feats = {}
    for k, ft in info["features"].items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            feats[k] = datasets.Image()
        elif tuple(ft["shape"]) == (1,):
            feats[k] = datasets.Value(dtype=ft["dtype"])
        else:
            feats[k] = datasets.Sequence(length=ft["shape"][0], feature=datasets.Value(dtype=ft["dtype"]))
    files = sorted(str(p) for p in (root / "data").glob("chunk-*/file-*.parquet"))
    data = datasets.concatenate_datasets(
        [datasets.Dataset.from_parquet(f, features=datasets.Features(feats)) for f in files]
    )
    assert len(data) == info["total_frames"], (len(data), info["total_frames"])
    for e in range(len(eps)):
        row = data[eps[e]["dataset_from_index"]]
        assert row["episode_index"] == e and row["frame_index"] == 0
        assert tasks.iloc[row["task_index"]].name in eps[e]["tasks"]
        for k, ft in info["features"].items():
            if ft["dtype"] == "image":
                assert row[k].size == (ft["shape"][1], ft["shape"][0]), (k, row[k].size)
    print(f"ok: {len(eps)} episodes, {len(data)} frames, tasks {list(tasks.index)} load as lerobot v3 does")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
