"""The URDF (used by the runtime for IK, limits and RViz) has the MJCF arm's kinematics and limits."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import mujoco
import numpy as np

from apt_core.sim.env import ARM_JOINTS, MJCF_PATH, URDF_PATH


def _rot(axis: np.ndarray, a: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def urdf_fk(q: dict[str, float]) -> dict[str, np.ndarray]:
    """World position of every URDF link (all origins here have rpy 0; checked below)."""
    root = ET.parse(URDF_PATH).getroot()
    joints = {j.find("child").get("link"): j for j in root.findall("joint")}
    out = {"base_link": (np.eye(3), np.zeros(3))}

    def pose(link: str):
        if link in out:
            return out[link]
        j = joints[link]
        r, p = pose(j.find("parent").get("link"))
        org = j.find("origin")
        assert org.get("rpy", "0 0 0") == "0 0 0"
        p = p + r @ np.array([float(v) for v in org.get("xyz").split()])
        axis = j.find("axis")
        ax = np.array([float(v) for v in axis.get("xyz").split()]) if axis is not None else None
        if j.get("type") == "revolute":
            r = r @ _rot(ax, q.get(j.get("name"), 0.0))
        elif j.get("type") == "prismatic":
            p = p + r @ (ax * q.get(j.get("name"), 0.0))
        out[link] = (r, p)
        return out[link]

    return {link: pose(link)[1] for link in [*joints, "base_link"]}


def test_urdf_fk_matches_mujoco() -> None:
    m = mujoco.MjModel.from_xml_path(str(MJCF_PATH))
    d = mujoco.MjData(m)
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = {}
        for j in ARM_JOINTS:
            lo, hi = m.jnt_range[m.joint(j).id]
            q[j] = float(rng.uniform(lo, hi))
        q["finger_left"] = q["finger_right"] = float(rng.uniform(0, 0.04))
        for j, v in q.items():
            d.qpos[m.jnt_qposadr[m.joint(j).id]] = v
        mujoco.mj_kinematics(m, d)
        fk = urdf_fk(q)
        for link in ("shoulder_link", "forearm_link", "wrist_3_link", "hand", "left_finger", "right_finger"):
            np.testing.assert_allclose(fk[link], d.body(link).xpos, atol=1e-6, err_msg=link)
        np.testing.assert_allclose(fk["tcp"], d.site("tcp").xpos, atol=1e-6)


def test_urdf_limits_match_mujoco() -> None:
    m = mujoco.MjModel.from_xml_path(str(MJCF_PATH))
    root = ET.parse(URDF_PATH).getroot()
    lim = {j.get("name"): j.find("limit") for j in root.findall("joint") if j.find("limit") is not None}
    for j in (*ARM_JOINTS, "finger_left", "finger_right"):
        lo, hi = m.jnt_range[m.joint(j).id]
        assert float(lim[j].get("lower")) == lo and float(lim[j].get("upper")) == hi, j
