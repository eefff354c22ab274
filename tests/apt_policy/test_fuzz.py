"""No message can crash the node: fuzz every callback (images, joint states, success, services,
action goals) while a robot streams valid data, then check the node still works and logged the
problems once per kind (throttled), naming what was wrong."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from rosclient import Client, start_policy, start_robot
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool

from apt_msgs.msg import PolicyStatus

pytestmark = pytest.mark.ros
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3", "gripper"]


def _bad_images(rng: random.Random) -> list[Image]:
    out = []

    def img(enc: str, h: int, w: int, step: int, n: int) -> Image:
        m = Image()
        m.header.stamp.sec = int(time.time())
        m.encoding, m.height, m.width, m.step = enc, h, w, step
        m.data = bytes(rng.getrandbits(8) for _ in range(min(n, 4096))) if n < 4096 else bytes(n)
        return m

    out.append(img("yuv422_weird", 128, 128, 256, 128 * 256))  # unknown encoding
    out.append(img("rgb8", 128, 128, 384, 100))  # too few bytes
    out.append(img("rgb8", 0, 0, 0, 0))  # empty
    out.append(img("rgb8", 100000, 100000, 300000, 10))  # absurd size
    out.append(img("rgb8", 128, 128, 10, 128 * 384))  # step smaller than a row
    out.append(img("", 4, 4, 12, 48))
    for _ in range(20):
        out.append(
            img(
                rng.choice(["rgb8", "bgr8", "mono8", "16UC1", "rgba8", "?"]),
                rng.randint(0, 300),
                rng.randint(0, 300),
                rng.randint(0, 2000),
                rng.randint(0, 5000),
            )
        )
    return out


def _bad_joint_states(rng: random.Random) -> list[JointState]:
    out = []

    def js(names: list[str], pos: list[float]) -> JointState:
        m = JointState()
        m.header.stamp.sec = int(time.time())
        m.name, m.position = names, pos
        return m

    out.append(js(JOINTS[:3], [0.0] * 3))  # lacks configured joints
    out.append(js(JOINTS, [0.0] * 3))  # names/positions mismatch
    out.append(js(JOINTS, [math.nan] + [0.0] * 6))
    out.append(js(JOINTS, [math.inf] * 7))
    out.append(js([], []))
    for _ in range(20):
        n = rng.randint(0, 9)
        out.append(
            js(
                [rng.choice([*JOINTS, "x", "\u00e9", ""]) for _ in range(n)],
                [
                    rng.choice([0.0, 1e308, -1e308, math.nan, rng.uniform(-10, 10)])
                    for _ in range(rng.randint(0, 9))
                ],
            )
        )
    return out


# Once intermittent (CI of session 3's last stop, once): after the fuzzing the first plan of "left"
# was refused by the start-jump check (first point 0.367 where 0.045 was expected). Session 13
# removed two causes of such faults (the executor's process stalls and plans published on a stale
# joint state, docs/runtime.md); the start-jump message names the measured value and the commanded
# motion, to explain a next occurrence. Session 25 ran it 20 times without reruns (10 beside two
# busy-looping processes), all passed, so it runs without reruns now.
def test_fuzz_every_callback(processes, client: Client, tmp_path) -> None:
    start_robot(processes)
    policy = start_policy(processes)
    client.wait_ready()
    rng = random.Random(0)
    n = client.node
    img_pub = n.create_publisher(Image, "/camera/front/image_raw", qos_profile_sensor_data)
    js_pub = n.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    ok_pub = n.create_publisher(Bool, "/apt_sim/success", 10)
    time.sleep(1.0)  # discovery
    for _ in range(3):
        for m in _bad_images(rng):
            img_pub.publish(m)
        for m in _bad_joint_states(rng):
            js_pub.publish(m)
        for v in (True, False):
            ok_pub.publish(Bool(data=v))
        time.sleep(0.1)
    # services and action with bad input: rejected with a reason, never a crash
    # (a NUL byte cannot be tested here: ROS strings are C strings and cut the text at NUL in transport)
    for text, reason in (
        ("", "empty"),
        ("x" * 600, "limit is 512"),
        ("\x1b[31mpick up", "non-printable"),
        ("\u200b\u200b", "non-printable"),
    ):
        r = client.instruct(text)
        assert not r.accepted and reason in r.message and r.task_id == "", (text, r.message)
    r = client.instruct("left", mode=7)
    assert not r.accepted and "unknown mode 7" in r.message
    handle = client.send_goal("")
    assert not handle.accepted
    handle = client.send_goal("left", timeout_s=float("nan"))
    assert not handle.accepted

    time.sleep(1.0)
    assert policy.poll() is None, "the node died"
    # the node still works with the robot's valid stream
    r = client.instruct("left")
    assert r.accepted
    client.wait_for(
        lambda: client.last_status().state == PolicyStatus.STATE_RUNNING and len(client.chunks) > 1,
        15,
        "running after the fuzzing",
    )
    log = processes.log_text(policy)
    assert "dropped image message" in log and "dropped joint_states message" in log
    assert "lacks configured joints" in log or "non-finite" in log or "names but" in log
    # throttled: one line per kind per 5 s, not one per bad message (~80 were sent)
    assert log.count("dropped image message") <= 4 and log.count("dropped joint_states message") <= 4
    assert "Traceback" not in log


def test_conversions_roundtrip_and_errors() -> None:
    """Image/CompressedImage <-> numpy without cv_bridge, JointState mapping (no ROS graph needed)."""
    from apt_policy.conversions import (
        ConversionError,
        compressed_msg_to_rgb,
        image_msg_to_rgb,
        joint_state_to_array,
        rgb_to_compressed_msg,
        rgb_to_image_msg,
    )

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    assert np.array_equal(image_msg_to_rgb(rgb_to_image_msg(img)), img)
    assert image_msg_to_rgb(rgb_to_image_msg(img), 32, 24).shape == (24, 32, 3)
    assert np.array_equal(compressed_msg_to_rgb(rgb_to_compressed_msg(img, "png")), img)
    bgr = rgb_to_image_msg(img)
    bgr.encoding, bgr.data = "bgr8", img[:, :, ::-1].tobytes()
    assert np.array_equal(image_msg_to_rgb(bgr), img)
    bad = rgb_to_image_msg(img)
    bad.encoding = "yuv422"
    with pytest.raises(ConversionError, match="unknown image encoding"):
        image_msg_to_rgb(bad)
    c = rgb_to_compressed_msg(img)
    c.data = b"not a jpeg"
    with pytest.raises(ConversionError, match="corrupt"):
        compressed_msg_to_rgb(c)
    m = JointState(name=["b", "a", "extra"], position=[2.0, 1.0, 9.0])
    assert np.array_equal(joint_state_to_array(m, ("a", "b")), [1.0, 2.0])
    with pytest.raises(ConversionError, match=r"lacks configured joints \['c'\]"):
        joint_state_to_array(m, ("a", "c"))
