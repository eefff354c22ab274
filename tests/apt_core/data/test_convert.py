"""Converter round trips on real rosbag2 files written by the tests (mcap and sqlite3)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from apt_core.contract import CameraSpec, load_contract
from apt_core.data.convert import convert, main
from apt_core.data.images import decode_stored
from apt_core.data.lerobot_v3 import load_v3
from apt_core.data.synthetic import write_synthetic_bag


@pytest.fixture
def contract():
    return load_contract()


def _frames(root: Path):
    ds = load_v3(root)
    d = ds.data
    imgs = np.stack([decode_stored(c["bytes"]) for c in d["observation.images.front"].to_pylist()])
    state = np.asarray(d["observation.state"].to_pylist())
    action = np.asarray(d["action"].to_pylist())
    return ds, imgs, state, action


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_values_and_images(tmp_path: Path, contract, storage: str) -> None:
    sb = write_synthetic_bag(tmp_path / "bag", contract, 25, "stack the cubes", storage=storage)
    summary = convert(tmp_path / "bag", tmp_path / "out", contract)
    assert (summary.episodes, summary.frames, summary.tasks, summary.bags_converted) == (1, 25, 1, 1)
    assert summary.skips.total() == 0 and not summary.skipped_bags
    ds, imgs, state, action = _frames(tmp_path / "out")
    np.testing.assert_array_equal(imgs, sb.images["front"])  # PNG storage is lossless
    np.testing.assert_allclose(state, sb.states, atol=1e-6)  # float32 storage
    np.testing.assert_allclose(action, sb.targets, atol=1e-6)  # command source: target for t + dt
    assert ds.tasks == ["stack the cubes"]
    assert ds.info["fps"] == contract.rate_hz and ds.info["total_frames"] == 25
    assert "episodes: 1, frames: 25" in summary.text()


def test_next_state_action_source(tmp_path: Path, contract) -> None:
    c = dataclasses.replace(contract, action_source="next_state")
    sb = write_synthetic_bag(tmp_path / "bag", c, 12)
    summary = convert(tmp_path / "bag", tmp_path / "out", c)
    _, _, state, action = _frames(tmp_path / "out")
    assert summary.frames == 11  # the last frame has no state one period later
    np.testing.assert_allclose(action, sb.states[1:12], atol=1e-6)
    np.testing.assert_allclose(state, sb.states[:11], atol=1e-6)


def test_instruction_change_splits_episodes_and_multiple_bags(tmp_path: Path, contract) -> None:
    write_synthetic_bag(
        tmp_path / "bags" / "a",
        contract,
        20,
        "pick the red cube",
        instruction_changes=[(8, "put it in the bin")],
    )
    write_synthetic_bag(tmp_path / "bags" / "b", contract, 10, "pick the red cube", start_s=500.0)
    summary = convert(tmp_path / "bags", tmp_path / "out", contract)
    ds = load_v3(tmp_path / "out")
    eps = ds.episodes.to_pydict()
    assert eps["length"] == [8, 12, 10]
    assert [t[0] for t in eps["tasks"]] == ["pick the red cube", "put it in the bin", "pick the red cube"]
    assert ds.tasks == ["pick the red cube", "put it in the bin"]
    assert summary.episodes == 3 and summary.tasks == 2
    # frame_index restarts per episode; task_index follows the segment
    assert ds.data["task_index"].to_pylist()[6:10] == [0, 0, 1, 1]


def test_metadata_instruction(tmp_path: Path, contract) -> None:
    c = dataclasses.replace(contract, instruction_source="metadata")
    write_synthetic_bag(tmp_path / "bag", c, 6, "open the drawer")
    convert(tmp_path / "bag", tmp_path / "out", c)
    assert load_v3(tmp_path / "out").tasks == ["open the drawer"]


def test_header_vs_receive_time(tmp_path: Path, contract) -> None:
    # header stamps 30 ms before receipt; both clocks give the same frames because every stream shifts
    sb = write_synthetic_bag(tmp_path / "bag", contract, 10, header_offset_s=0.03)
    for ts in ("header", "receive"):
        convert(tmp_path / "bag", tmp_path / ts, contract, time_source=ts)
        _, imgs, state, action = _frames(tmp_path / ts)
        np.testing.assert_array_equal(imgs, sb.images["front"])
        np.testing.assert_allclose(state, sb.states, atol=1e-6)
        np.testing.assert_allclose(action, sb.targets, atol=1e-6)


def test_encodings_compressed_and_resize(tmp_path: Path, contract) -> None:
    cam = dataclasses.replace(contract.cameras[0], compressed=True)
    c = dataclasses.replace(contract, cameras=(cam,))
    sb = write_synthetic_bag(tmp_path / "png", c, 5, compressed_format="png")
    convert(tmp_path / "png", tmp_path / "o1", c)
    np.testing.assert_array_equal(_frames(tmp_path / "o1")[1], sb.images["front"])
    sb2 = write_synthetic_bag(tmp_path / "bgr", contract, 5, image_encoding="bgr8", image_size=(256, 256))
    convert(tmp_path / "bgr", tmp_path / "o2", contract)
    imgs = _frames(tmp_path / "o2")[1]
    assert imgs.shape == (5, 128, 128, 3)  # resized to the contract's image size
    small = sb2.images["front"][:, ::2, ::2].astype(int)
    assert np.abs(imgs.astype(int) - small).mean() < 8


def test_two_cameras(tmp_path: Path, contract) -> None:
    wrist = CameraSpec(name="wrist", topic="/camera/wrist/image_raw", encoding="mono8")
    c = dataclasses.replace(contract, cameras=(contract.cameras[0], wrist))
    sb = write_synthetic_bag(tmp_path / "bag", c, 4)
    convert(tmp_path / "bag", tmp_path / "out", c)
    ds = load_v3(tmp_path / "out")
    w = np.stack([decode_stored(x["bytes"]) for x in ds.data["observation.images.wrist"].to_pylist()])
    np.testing.assert_array_equal(w, sb.images["wrist"])
    assert set(ds.camera_keys) == {"observation.images.front", "observation.images.wrist"}


def test_parallel_workers_give_identical_output(tmp_path: Path, contract) -> None:
    for i in range(3):
        write_synthetic_bag(tmp_path / "bags" / f"b{i}", contract, 8, f"task {i}", seed=i)
    convert(tmp_path / "bags", tmp_path / "w1", contract, workers=1)
    convert(tmp_path / "bags", tmp_path / "w2", contract, workers=2)
    for rel in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"):
        assert pq.read_table(tmp_path / "w1" / rel).equals(pq.read_table(tmp_path / "w2" / rel))
    assert json.loads((tmp_path / "w1/meta/stats.json").read_text()) == json.loads(
        (tmp_path / "w2/meta/stats.json").read_text()
    )


def test_cli_main(tmp_path: Path, contract, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_bag(tmp_path / "bag", contract, 6)
    rc = main(
        [
            str(tmp_path / "bag"),
            "--out",
            str(tmp_path / "out"),
            "--align",
            "hold",
            "--time",
            "receive",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "episodes: 1, frames: 6" in out
    assert json.loads((tmp_path / "out/meta/apt.json").read_text())["align"] == "hold"
    rc = main([str(tmp_path / "bag"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1 and "already holds a dataset" in capsys.readouterr().err
    rc = main([str(tmp_path / "nope"), "--out", str(tmp_path / "o2"), "--no-progress"])
    assert rc == 1 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rule", "lengths", "frame_of_tick"),
    [
        # camera silent at frames 4-6. asof (max age 2 dt): ticks 4, 5 reuse image 3, tick 6 is too stale
        ("asof", [6, 3], [0, 1, 2, 3, 3, 3, 7, 8, 9]),
        ("hold", [10], [0, 1, 2, 3, 3, 3, 3, 7, 8, 9]),  # zero-order hold: nothing dropped
        ("drop", [4, 3], [0, 1, 2, 3, 7, 8, 9]),  # no image within dt/2 of ticks 4-6
    ],
)
def test_alignment_rules_end_to_end_with_a_stalled_camera(
    tmp_path: Path, contract, rule, lengths, frame_of_tick
) -> None:
    def hook(i: int, ov: dict) -> None:
        if i in (4, 5, 6):
            ov["skip_topics"] = ["/camera/front/image_raw"]

    sb = write_synthetic_bag(tmp_path / "bag", contract, 10, frame_hook=hook)
    s = convert(tmp_path / "bag", tmp_path / "out", contract, align=rule)
    ds, imgs, state, action = _frames(tmp_path / "out")
    assert ds.episodes["length"].to_pylist() == lengths
    np.testing.assert_array_equal(imgs, sb.images["front"][frame_of_tick])
    ticks = [i for i in range(10) if rule == "hold" or i not in {"asof": (6,), "drop": (4, 5, 6)}[rule]]
    np.testing.assert_allclose(state, sb.states[ticks], atol=1e-6)  # joint states kept flowing
    np.testing.assert_allclose(action, sb.targets[ticks], atol=1e-6)
    dropped = 10 - sum(lengths)
    if dropped:
        assert (
            f"/camera/front/image_raw: ticks dropped by alignment rule '{rule}' (no fresh message): {dropped}"
            in "\n".join(s.skips.lines())
        )


def test_bag_of_rclpy_serialised_messages(tmp_path: Path, contract) -> None:
    """Every message serialised by real rclpy, as `ros2 bag record` stores them (not a mock)."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from apt_core.data.synthetic import TYPESTORE, synthetic_image

    dt = 100_000_000
    names = list(contract.joint_names)
    expected_imgs, expected_state, expected_action = [], [], []
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ci = w.add_connection("/camera/front/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        cj = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TYPESTORE)
        cc = w.add_connection(
            "/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory", typestore=TYPESTORE
        )
        cs = w.add_connection("/apt/instruction", "std_msgs/msg/String", typestore=TYPESTORE)
        w.write(cs, 10**11, serialize_message(String(data="wave hello")))
        for i in range(6):
            t = 10**11 + i * dt
            sec, nsec = divmod(t, 10**9)
            img = Image(height=128, width=128, encoding="bgr8", step=128 * 3)
            rgb = synthetic_image(i, 128, 128)
            img.data = rgb[:, :, ::-1].tobytes()
            img.header.stamp.sec, img.header.stamp.nanosec = sec, nsec
            w.write(ci, t, serialize_message(img))
            js = JointState(name=names[::-1], position=[0.1 * i + j for j in range(7)][::-1])
            js.header.stamp.sec, js.header.stamp.nanosec = sec, nsec
            w.write(cj, t, serialize_message(js))
            tr = JointTrajectory(joint_names=names)
            tr.header.stamp.sec, tr.header.stamp.nanosec = sec, nsec
            for k in (1, 2):  # two points: t + dt and t + 2 dt
                p = JointTrajectoryPoint(positions=[i + k + 0.5 * j for j in range(7)])
                p.time_from_start.nanosec = k * dt
                tr.points.append(p)
            w.write(cc, t, serialize_message(tr))
            expected_imgs.append(rgb)
            expected_state.append([0.1 * i + j for j in range(7)])
            expected_action.append([i + 1 + 0.5 * j for j in range(7)])
    s = convert(tmp_path / "bag", tmp_path / "out", contract)
    assert s.frames == 6 and s.skips.total() == 0, s.text()
    ds, imgs, state, action = _frames(tmp_path / "out")
    np.testing.assert_array_equal(imgs, np.stack(expected_imgs))
    np.testing.assert_allclose(state, expected_state, atol=1e-6)
    np.testing.assert_allclose(action, expected_action, atol=1e-6)
    assert ds.tasks == ["wave hello"]


def test_two_pass_image_reading_over_memory_budget_gives_the_same_dataset(tmp_path: Path, contract) -> None:
    def hook(i: int, ov: dict) -> None:
        if i == 5:
            ov["skip_topics"] = ["/camera/front/image_raw"]

    write_synthetic_bag(
        tmp_path / "bag",
        contract,
        14,
        "a",
        instruction_changes=[(9, "b")],
        frame_hook=hook,
        stamp_offsets_s={3: -0.25},
    )
    from apt_core.data.bag_reader import read_bag

    assert read_bag(tmp_path / "bag", contract, image_budget_mb=0.1).reread_images  # 49 KB frames
    assert not read_bag(tmp_path / "bag", contract).reread_images
    convert(tmp_path / "bag", tmp_path / "mem", contract)
    convert(tmp_path / "bag", tmp_path / "two", contract, image_budget_mb=0.1)
    rel = "data/chunk-000/file-000.parquet"
    assert pq.read_table(tmp_path / "mem" / rel).equals(pq.read_table(tmp_path / "two" / rel))


def test_ee_pose_action_source(tmp_path: Path, contract) -> None:
    """Action = the measured end-effector pose one period later as 10-D (xyz, 6-D rotation, gripper)."""
    from apt_core.data.dataset import DemoDataset
    from apt_core.data.synthetic import EE_AXIS
    from apt_core.runtime.ik import axis_angle_matrix, rot6d_to_matrix

    c = dataclasses.replace(contract, action_source="ee_pose", gripper_joint="gripper")
    sb = write_synthetic_bag(tmp_path / "bag", c, 8)
    s = convert(tmp_path / "bag", tmp_path / "out", c)
    assert s.frames == 7 and s.skips.total() == 0  # the last frame has no pose one period later
    ds, _, state, action = _frames(tmp_path / "out")
    assert ds.info["features"]["action"]["shape"] == [10]
    assert ds.info["features"]["action"]["names"][-1] == "gripper"
    np.testing.assert_allclose(state, sb.states[:7], atol=1e-6)
    for i in range(7):
        nxt = sb.states[i + 1]
        np.testing.assert_allclose(action[i, :3], 0.3 + 0.1 * nxt[:3], atol=1e-6)
        # rotation checked against Rodrigues' formula (independent of the quaternion code)
        np.testing.assert_allclose(
            rot6d_to_matrix(action[i, 3:9]), axis_angle_matrix(EE_AXIS, nxt[3]), atol=1e-5
        )
        assert action[i, 9] == pytest.approx(nxt[6], abs=1e-6)  # gripper joint at t + dt
    sample = DemoDataset(tmp_path / "out", chunk_length=4)[5]
    assert sample["action"].shape == (4, 10) and sample["action_is_pad"].tolist() == [
        False,
        False,
        True,
        True,
    ]


def test_ee_pose_missing_topic(tmp_path: Path, contract) -> None:
    c = dataclasses.replace(contract, action_source="ee_pose", gripper_joint="gripper")
    write_synthetic_bag(tmp_path / "bags" / "nopose", c, 5, skip_topics=["/ee_pose"])
    write_synthetic_bag(tmp_path / "bags" / "ok", c, 5)
    s = convert(tmp_path / "bags", tmp_path / "out", c)
    assert s.bags_converted == 1 and "nopose, topic /ee_pose: required topic missing" in s.skipped_bags[0]
