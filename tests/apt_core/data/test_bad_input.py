"""Every bad input of issue #4: a clear error naming bag, topic and time, or a counted skip.

In each case a good bag converts beside the bad one (the rest converts) unless the bad input is the
only one, and nothing half-written is left looking like a dataset.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from apt_core.contract import load_contract
from apt_core.data import convert as conv
from apt_core.data.convert import convert
from apt_core.data.errors import BagError, ConversionError
from apt_core.data.lerobot_v3 import load_v3
from apt_core.data.synthetic import write_synthetic_bag

MIN = 100.0  # synthetic bags start at t = 100 s


@pytest.fixture
def contract():
    return load_contract()


def _with_good(tmp_path: Path, contract, bad_name: str, **kw):
    """Write a good bag and a bad one side by side; convert both; return (summary, bad bag path)."""
    write_synthetic_bag(tmp_path / "bags" / "good", contract, 10)
    bad = tmp_path / "bags" / bad_name
    write_synthetic_bag(bad, contract, kw.pop("n", 10), **kw)
    return bad


def _convert(tmp_path: Path, contract, **kw):
    return convert(tmp_path / "bags", tmp_path / "out", contract, **kw)


def test_truncated_bag_is_skipped_and_named(tmp_path: Path, contract) -> None:
    bad = _with_good(tmp_path, contract, "trunc")
    f = next(bad.glob("*.mcap"))
    os.truncate(f, f.stat().st_size // 2)
    s = _convert(tmp_path, contract)
    assert s.bags == 2 and s.bags_converted == 1 and s.episodes == 1
    assert (
        len(s.skipped_bags) == 1
        and "trunc" in s.skipped_bags[0]
        and "truncated or corrupt" in s.skipped_bags[0]
    )
    assert "skipped bags (1)" in s.text()


def test_corrupt_sqlite_bag(tmp_path: Path, contract) -> None:
    bad = _with_good(tmp_path, contract, "corrupt", storage="sqlite3")
    f = next(bad.glob("*.db3"))
    f.write_bytes(b"garbage" * 100)
    s = _convert(tmp_path, contract)
    assert s.bags_converted == 1 and "corrupt" in s.skipped_bags[0]


def test_required_topic_missing_names_topic(tmp_path: Path, contract) -> None:
    _with_good(tmp_path, contract, "nocam", skip_topics=["/camera/front/image_raw"])
    s = _convert(tmp_path, contract)
    msg = s.skipped_bags[0]
    assert "nocam" in msg and "topic /camera/front/image_raw" in msg and "required topic missing" in msg


def test_strict_fails_whole_conversion_and_writes_nothing(tmp_path: Path, contract) -> None:
    _with_good(tmp_path, contract, "nocmd", skip_topics=["/arm_controller/joint_trajectory"])
    with pytest.raises(
        ConversionError, match="--strict: bag .*nocmd, topic /arm_controller/joint_trajectory"
    ):
        _convert(tmp_path, contract, strict=True)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_empty_bag(tmp_path: Path, contract) -> None:
    write_synthetic_bag(tmp_path / "bags" / "empty", contract, 0)
    with pytest.raises(ConversionError, match=r"no usable episodes in any bag:\n  bag .*empty: bag is empty"):
        _convert(tmp_path, contract)
    assert not (tmp_path / "out").exists()


def test_timestamps_going_backwards_are_dropped_and_counted(tmp_path: Path, contract) -> None:
    sb = write_synthetic_bag(tmp_path / "bags" / "back", contract, 12, stamp_offsets_s={5: -0.25})
    s = _convert(tmp_path, contract)
    lines = "\n".join(s.skips.lines())
    for topic in ("/camera/front/image_raw", "/joint_states", "/arm_controller/joint_trajectory"):
        assert (
            f"{topic}: timestamp not after the previous message (went backwards or repeated): 1 (first at t=100.250 s)"
            in lines
        )
    # asof holds frame 4's messages for the tick at frame 5 (100 ms old): no tick is lost
    assert s.frames == 12
    state = np.asarray(load_v3(tmp_path / "out").data["observation.state"].to_pylist())
    np.testing.assert_allclose(state[5], sb.states[4], atol=1e-6)
    np.testing.assert_allclose(state[6], sb.states[6], atol=1e-6)


def test_image_size_change_mid_bag(tmp_path: Path, contract) -> None:
    def hook(i: int, ov: dict) -> None:
        if i >= 6:
            ov["image_size"] = (64, 64)

    _with_good(tmp_path, contract, "resize", frame_hook=hook)
    s = _convert(tmp_path, contract)
    assert s.bags_converted == 1
    msg = s.skipped_bags[0]
    assert "resize" in msg and "topic /camera/front/image_raw" in msg and "t=100.600000 s" in msg
    assert "image size changed mid-bag from ('rgb8', (128, 128)) to ('rgb8', (64, 64))" in msg


def test_image_encoding_change_mid_bag(tmp_path: Path, contract) -> None:
    def hook(i: int, ov: dict) -> None:
        if i >= 3:
            ov["image_encoding"] = "bgr8"

    _with_good(tmp_path, contract, "enc", frame_hook=hook)
    msg = _convert(tmp_path, contract).skipped_bags[0]
    assert "image encoding/format changed mid-bag from ('rgb8', (128, 128)) to ('bgr8', (128, 128))" in msg
    assert "t=100.300000 s" in msg


def test_unknown_encoding(tmp_path: Path, contract) -> None:
    _with_good(tmp_path, contract, "yuv", image_encoding="yuv422")
    msg = _convert(tmp_path, contract).skipped_bags[0]
    assert "yuv" in msg and "unknown image encoding 'yuv422'" in msg and "/camera/front/image_raw" in msg


def test_nan_joint_values_dropped_and_counted(tmp_path: Path, contract) -> None:
    write_synthetic_bag(tmp_path / "bags" / "nan", contract, 10, nan_frames=[3, 4, 5])
    s = _convert(tmp_path, contract, align="asof")
    assert "/joint_states: non-finite joint value (NaN/inf): 3 (first at t=100.300 s)" in s.skips.lines()
    # asof (max age 200 ms) bridges frames 3-4 with frame 2, but frame 5's tick is 300 ms stale
    assert s.episodes == 2 and s.frames == 9
    state = np.asarray(load_v3(tmp_path / "out").data["observation.state"].to_pylist())
    assert np.isfinite(state).all()


def test_joint_names_in_another_order_are_reordered(tmp_path: Path, contract) -> None:
    order = list(reversed(contract.joint_names))
    sb = write_synthetic_bag(tmp_path / "bags" / "rev", contract, 6, joint_order=order)
    _convert(tmp_path, contract)
    state = np.asarray(load_v3(tmp_path / "out").data["observation.state"].to_pylist())
    np.testing.assert_allclose(state, sb.states, atol=1e-6)


def test_missing_joint_names(tmp_path: Path, contract) -> None:
    _with_good(tmp_path, contract, "missing", joint_order=list(contract.joint_names[:-1]))
    msg = _convert(tmp_path, contract).skipped_bags[0]
    assert "missing" in msg and "topic /joint_states" in msg and "no usable joint states" in msg
    assert "joints missing from message: ['gripper']" in msg


def test_rclpy_serialised_joint_state_with_empty_trailing_arrays(tmp_path: Path, contract) -> None:
    """Real rclpy serialisation (not a mock): rosbags' strict deserialiser rejects these bytes."""
    from rclpy.serialization import serialize_message
    from rosbags.serde import SerdeError
    from sensor_msgs.msg import JointState

    from apt_core.data.synthetic import TYPESTORE

    def rclpy_ser(names, pos, vel, stamp_ns):
        m = JointState()
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        m.name = list(names)
        m.position = [float(x) for x in pos]
        m.velocity = [float(x) for x in vel]
        m.effort = []
        return serialize_message(m)

    raw = rclpy_ser(["a"], [1.0], [], 0)
    with pytest.raises(SerdeError, match="size mismatch"):  # the quirk is real
        TYPESTORE.deserialize_cdr(raw, "sensor_msgs/msg/JointState")
    sb = write_synthetic_bag(tmp_path / "bags" / "rclpy", contract, 8, joint_state_serializer=rclpy_ser)
    s = _convert(tmp_path, contract)
    assert s.frames == 8 and s.lenient_decodes == 8 and s.skips.total() == 0
    assert "8 messages had rclpy trailing padding (decoded, kept)" in s.text()
    state = np.asarray(load_v3(tmp_path / "out").data["observation.state"].to_pylist())
    np.testing.assert_allclose(state, sb.states, atol=1e-6)


def test_output_folder_with_partial_dataset(tmp_path: Path, contract) -> None:
    write_synthetic_bag(tmp_path / "bags" / "a", contract, 5)
    out = tmp_path / "out"
    (out / "data" / "chunk-000").mkdir(parents=True)
    (out / "data" / "chunk-000" / "file-000.parquet").write_bytes(b"half")
    with pytest.raises(ConversionError, match=r"is not empty but has no meta/info.json \(a partial dataset"):
        _convert(tmp_path, contract)
    assert (out / "data/chunk-000/file-000.parquet").read_bytes() == b"half"  # untouched
    s = _convert(tmp_path, contract, overwrite=True)
    assert s.frames == 5 and load_v3(out).info["total_frames"] == 5
    assert not list(tmp_path.glob(".out.*"))


def test_interrupted_conversion_leaves_no_dataset(
    tmp_path: Path, contract, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic_bag(tmp_path / "bags" / "a", contract, 5)
    write_synthetic_bag(tmp_path / "bags" / "b", contract, 5)
    real = conv._convert_one
    calls = []

    def flaky(bag, c, opts):
        calls.append(bag)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C after the first bag was written
        return real(bag, c, opts)

    monkeypatch.setattr(conv, "_convert_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        _convert(tmp_path, contract)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_input_path_that_is_not_a_bag(tmp_path: Path, contract) -> None:
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BagError, match="empty_dir: no rosbag2 found"):
        convert(tmp_path / "empty_dir", tmp_path / "out", contract)


def test_ee_pose_source_without_topic(tmp_path: Path, contract) -> None:
    write_synthetic_bag(tmp_path / "bags" / "a", contract, 5)
    with pytest.raises(ConversionError, match="action.source is 'ee_pose' but action.ee_pose_topic is empty"):
        _convert(tmp_path, dataclasses.replace(contract, action_source="ee_pose", ee_pose_topic=""))
