"""DemoDataset / make_loader: keys, shapes, chunk padding, action history, augmentation, seeding;
images of columns past 2 GiB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from apt_core.contract import load_contract
from apt_core.data.convert import convert
from apt_core.data.dataset import DemoDataset, image_bytes, make_loader
from apt_core.data.images import decode_stored
from apt_core.data.synthetic import SyntheticBag, write_synthetic_bag

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SyntheticBag]]:
    tmp = tmp_path_factory.mktemp("ds")
    c = load_contract()
    bags = [
        write_synthetic_bag(tmp / "bags" / "a", c, 10, "pick the cube"),
        write_synthetic_bag(tmp / "bags" / "b", c, 6, "open the drawer", seed=3),
    ]
    convert(tmp / "bags", tmp / "ds", c)
    return tmp / "ds", bags


def test_sample_keys_shapes_and_values(converted) -> None:
    root, (a, _) = converted
    ds = DemoDataset(root, chunk_length=4)
    assert len(ds) == 16 and ds.meta["codebase_version"] == "v3.0"
    assert set(ds.stats) >= {"observation.state", "action", "observation.images.front"}
    s = ds[2]
    assert s["observation.images.front"].dtype == torch.uint8 and s["observation.images.front"].shape == (
        3,
        128,
        128,
    )
    np.testing.assert_array_equal(
        s["observation.images.front"].permute(1, 2, 0).numpy(), a.images["front"][2]
    )
    assert s["observation.state"].dtype == torch.float32 and s["observation.state"].shape == (7,)
    np.testing.assert_allclose(s["observation.state"].numpy(), a.states[2], atol=1e-6)
    assert s["action"].shape == (4, 7) and s["action"].dtype == torch.float32
    np.testing.assert_allclose(s["action"].numpy(), a.targets[2:6], atol=1e-6)
    assert s["action_is_pad"].dtype == torch.bool and not s["action_is_pad"].any()
    assert (s["task"], s["episode_index"], s["frame_index"]) == ("pick the cube", 0, 2)
    assert "observation.action_history" not in s


def test_chunk_padding_at_episode_end(converted) -> None:
    root, (a, b) = converted
    ds = DemoDataset(root, chunk_length=5)
    s = ds[8]  # episode 0 has 10 frames: frames 8, 9, then 3 pads repeating frame 9's action
    assert s["action_is_pad"].tolist() == [False, False, True, True, True]
    np.testing.assert_allclose(s["action"].numpy(), a.targets[[8, 9, 9, 9, 9]], atol=1e-6)
    last = ds[len(ds) - 1]  # never reads into another episode
    assert last["episode_index"] == 1 and last["action_is_pad"].tolist() == [False] + [True] * 4
    np.testing.assert_allclose(last["action"].numpy(), np.repeat(b.targets[5:6], 5, axis=0), atol=1e-6)
    first_b = ds[10]
    assert first_b["task"] == "open the drawer" and first_b["frame_index"] == 0
    np.testing.assert_allclose(first_b["action"].numpy(), b.targets[0:5], atol=1e-6)


def test_action_history_padded_with_first_action(converted) -> None:
    root, (a, b) = converted
    ds = DemoDataset(root, chunk_length=2, n_action_history=3)
    h = ds[1]["observation.action_history"]
    assert h.shape == (3, 7)
    np.testing.assert_allclose(h.numpy(), a.targets[[0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(ds[5]["observation.action_history"].numpy(), a.targets[2:5], atol=1e-6)
    np.testing.assert_allclose(ds[11]["observation.action_history"].numpy(), b.targets[[0, 0, 0]], atol=1e-6)


def test_default_chunk_length_from_contract(converted) -> None:
    assert DemoDataset(converted[0]).chunk_length == load_contract().chunk_length
    with pytest.raises(ValueError, match="n_action_history must be >= 0"):
        DemoDataset(converted[0], n_action_history=-1)


def test_augmentation_changes_images_but_is_seeded(converted) -> None:
    root, _ = converted
    plain = DemoDataset(root)[3]["observation.images.front"]
    aug = DemoDataset(root, augment=True)
    torch.manual_seed(0)
    x1 = aug[3]["observation.images.front"]
    torch.manual_seed(0)
    x2 = aug[3]["observation.images.front"]
    assert x1.dtype == torch.uint8 and x1.shape == plain.shape
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, plain)


def test_loader_collates_and_is_reproducible(converted) -> None:
    root, _ = converted
    ds = DemoDataset(root, chunk_length=3, n_action_history=2)
    batch = next(iter(make_loader(ds, batch_size=5, shuffle=True, num_workers=0, seed=7)))
    assert isinstance(batch["task"], list) and len(batch["task"]) == 5 and isinstance(batch["task"][0], str)
    assert batch["observation.images.front"].shape == (5, 3, 128, 128)
    assert batch["action"].shape == (5, 3, 7) and batch["action_is_pad"].shape == (5, 3)
    assert batch["observation.action_history"].shape == (5, 2, 7)
    assert batch["episode_index"].dtype == torch.int64
    again = next(iter(make_loader(ds, batch_size=5, shuffle=True, num_workers=0, seed=7)))
    assert again["frame_index"].tolist() == batch["frame_index"].tolist()
    other = next(iter(make_loader(ds, batch_size=5, shuffle=True, num_workers=0, seed=8)))
    assert (
        other["frame_index"].tolist() != batch["frame_index"].tolist()
        or other["episode_index"].tolist() != batch["episode_index"].tolist()
    )
    total = sum(len(b["task"]) for b in make_loader(ds, batch_size=4, shuffle=False, num_workers=1, seed=0))
    assert total == len(ds)


def test_index_out_of_range(converted) -> None:
    with pytest.raises(IndexError, match="index 16 out of range for 16 frames"):
        DemoDataset(converted[0])[16]


def test_image_bytes_past_two_gib_are_read_in_place() -> None:
    # 33 chunks of 64 x 1 MiB cells (the same chunk repeated: 64 MiB of memory, 2.06 GiB of
    # logical bytes): one Arrow binary array cannot hold them (32-bit offsets), so concatenating
    # fails; image_bytes must give every frame in place, across chunk boundaries.
    cells = [bytes([k]) * (1 << 20) for k in range(64)]
    chunk = pa.StructArray.from_arrays(
        [pa.array(cells, pa.binary()), pa.array([None] * 64, pa.string())], names=["bytes", "path"]
    )
    column = pa.chunked_array([chunk] * 33 + [chunk.slice(0, 0)])
    with pytest.raises(pa.ArrowInvalid, match="overflow"):
        column.combine_chunks().field("bytes")
    images = image_bytes(column)
    assert len(images) == 33 * 64
    for frame in (0, 63, 64, 65, 32 * 64, 33 * 64 - 1):
        cell = images[frame].as_py()
        assert len(cell) == 1 << 20 and cell[0] == cell[-1] == frame % 64
    with pytest.raises(IndexError, match="out of bounds"):
        images[33 * 64]


def test_image_bytes_match_the_bag_frames(converted) -> None:
    root, (a, b) = converted
    images = DemoDataset(root).images["observation.images.front"]
    assert len(images) == 16
    np.testing.assert_array_equal(decode_stored(images[12].as_py()), b.images["front"][2])
