"""Inverse kinematics adapters: end-effector pose chunks -> joint trajectories.

The paper's action space is a chunk of 10-D end-effector poses (translation 3, 6-D rotation, gripper).
The runtime turns each pose into joint positions through an `IKAdapter`:

- `NumericalIK` (default, used with the simulator): damped least squares on the kinematic chain read
  from a URDF (`UrdfChain`), seeded with the previous solution so consecutive poses give continuous
  joints; joint limits from the URDF are respected by clipping each iteration.
- `MoveItIK`: the same interface over MoveIt 2's `moveit_py` (`RobotState.set_from_ik`). It cannot be
  installed from PyPI, so it is imported lazily and raises a clear error where it is missing.

No ROS imports (MoveItIK imports moveit only when constructed).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class IKError(RuntimeError):
    """IK failed (unreachable pose, bad model); the message says which pose and by how much."""


# ----------------------------------------------------------------------------- rotations
def rpy_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """URDF fixed-axis roll-pitch-yaw -> (3, 3) rotation: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """6-D rotation (first two columns of R, Zhou et al. 2019) -> (3, 3) via Gram-Schmidt."""
    a1, a2 = np.asarray(r6[:3], dtype=np.float64), np.asarray(r6[3:6], dtype=np.float64)
    b1 = a1 / max(np.linalg.norm(a1), 1e-12)
    a2 = a2 - np.dot(b1, a2) * b1
    b2 = a2 / max(np.linalg.norm(a2), 1e-12)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=1)


def matrix_to_rot6d(r: np.ndarray) -> np.ndarray:
    return np.concatenate([r[:, 0], r[:, 1]])


def rotation_error(r_target: np.ndarray, r_cur: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) rotating r_cur onto r_target, in the base frame."""
    r = r_target @ r_cur.T
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    s = np.sin(angle)
    if s < 1e-6:  # near pi: take the axis from the diagonal
        axis = np.sqrt(np.maximum((np.diag(r) + 1) / 2, 0))
        return axis * angle
    return v / (2 * s) * angle


# ----------------------------------------------------------------------------- URDF chain
@dataclass(frozen=True)
class ChainJoint:
    name: str
    type: str  # revolute | continuous | prismatic | fixed
    origin: np.ndarray  # (4, 4) parent link -> joint frame
    axis: np.ndarray  # (3,) in the joint frame
    lower: float
    upper: float


class UrdfChain:
    """The serial chain from `base_link` to `tip_link` of a URDF, with forward kinematics."""

    def __init__(self, joints: list[ChainJoint], base_link: str, tip_link: str) -> None:
        self.joints = joints
        self.base_link, self.tip_link = base_link, tip_link
        self.active = [j for j in joints if j.type != "fixed"]
        self.joint_names = tuple(j.name for j in self.active)

    @classmethod
    def from_urdf(cls, path: str | Path, base_link: str, tip_link: str) -> UrdfChain:
        p = Path(path)
        if not p.is_file():
            raise IKError(f"URDF not found: {p}")
        try:
            root = ET.parse(p).getroot()
        except ET.ParseError as e:
            raise IKError(f"{p}: not valid XML: {e}") from None
        by_child: dict[str, ET.Element] = {}
        for j in root.iter("joint"):
            child = j.find("child")
            if child is not None:
                by_child[str(child.get("link"))] = j
        chain: list[ChainJoint] = []
        link = tip_link
        while link != base_link:
            j = by_child.get(link)
            if j is None:
                raise IKError(f"{p}: no joint chain from {base_link!r} to {tip_link!r} (stuck at {link!r})")
            o = j.find("origin")
            xyz = np.array([float(v) for v in (o.get("xyz", "0 0 0") if o is not None else "0 0 0").split()])
            rpy = np.array([float(v) for v in (o.get("rpy", "0 0 0") if o is not None else "0 0 0").split()])
            t = np.eye(4)
            t[:3, :3], t[:3, 3] = rpy_to_matrix(rpy), xyz
            ax = j.find("axis")
            axis = np.array(
                [float(v) for v in (ax.get("xyz", "1 0 0") if ax is not None else "1 0 0").split()]
            )
            lim = j.find("limit")
            jtype = str(j.get("type"))
            lo, hi = -np.inf, np.inf
            if lim is not None and jtype in ("revolute", "prismatic"):
                lo, hi = float(lim.get("lower", "-inf")), float(lim.get("upper", "inf"))
            chain.append(ChainJoint(str(j.get("name")), jtype, t, axis, lo, hi))
            parent = j.find("parent")
            link = str(parent.get("link")) if parent is not None else ""
        chain.reverse()
        return cls(chain, base_link, tip_link)

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tip pose (4, 4) and the geometric Jacobian (6, n) [linear; angular] in the base frame."""
        t = np.eye(4)
        origins, axes, kinds = [], [], []
        i = 0
        for j in self.joints:
            t = t @ j.origin
            if j.type == "fixed":
                continue
            axis_w = t[:3, :3] @ j.axis
            origins.append(t[:3, 3].copy())
            axes.append(axis_w / np.linalg.norm(axis_w))
            kinds.append(j.type)
            m = np.eye(4)
            if j.type == "prismatic":
                m[:3, 3] = j.axis * q[i]
            else:
                m[:3, :3] = axis_angle_matrix(j.axis, float(q[i]))
            t = t @ m
            i += 1
        jac = np.zeros((6, len(self.active)))
        for k, (o, a, kind) in enumerate(zip(origins, axes, kinds)):
            if kind == "prismatic":
                jac[:3, k] = a
            else:
                jac[:3, k] = np.cross(a, t[:3, 3] - o)
                jac[3:, k] = a
        return t, jac


# ----------------------------------------------------------------------------- adapters
class IKAdapter(Protocol):
    """Maps a target end-effector pose (4, 4, base frame) to joint positions of `joint_names`."""

    joint_names: tuple[str, ...]

    def solve(self, target: np.ndarray, seed: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class IKConfig:
    max_iters: int = 100  # damped-least-squares iterations per pose
    damping: float = 1e-2  # lambda of DLS: trades accuracy for stability near singularities
    pos_tol: float = 1e-4  # position tolerance [m]
    rot_tol: float = 1e-3  # orientation tolerance [rad]
    rot_weight: float = 0.5  # weight of orientation error vs position error [m/rad]
    max_error: float = 0.02  # above this final position error [m] the pose is reported unreachable

    def __post_init__(self) -> None:
        if self.max_iters < 1 or self.damping <= 0 or self.pos_tol <= 0 or self.rot_tol <= 0:
            raise ValueError(f"IKConfig: invalid values {self}")
        if self.rot_weight < 0 or self.max_error <= 0:
            raise ValueError(f"IKConfig: invalid weights {self}")


class NumericalIK:
    """Damped-least-squares IK on a URDF chain (the built-in default adapter)."""

    def __init__(self, chain: UrdfChain, cfg: IKConfig | None = None) -> None:
        self.chain = chain
        self.cfg = cfg or IKConfig()
        self.joint_names = chain.joint_names
        self._lo = np.array([j.lower for j in chain.active])
        self._hi = np.array([j.upper for j in chain.active])

    def solve(self, target: np.ndarray, seed: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        q = np.clip(np.asarray(seed, dtype=np.float64).copy(), self._lo, self._hi)
        if not np.all(np.isfinite(target)) or target.shape != (4, 4):
            raise IKError(f"target pose must be a finite (4, 4) matrix, got shape {np.shape(target)}")
        w = np.array([1, 1, 1, cfg.rot_weight, cfg.rot_weight, cfg.rot_weight])
        for _ in range(cfg.max_iters):
            cur, jac = self.chain.forward(q)
            ep = target[:3, 3] - cur[:3, 3]
            er = rotation_error(target[:3, :3], cur[:3, :3])
            if np.linalg.norm(ep) < cfg.pos_tol and np.linalg.norm(er) < cfg.rot_tol:
                return q
            e = np.concatenate([ep, er]) * w
            jw = jac * w[:, None]
            dq = jw.T @ np.linalg.solve(jw @ jw.T + cfg.damping**2 * np.eye(6), e)
            q = np.clip(q + dq, self._lo, self._hi)
        cur, _ = self.chain.forward(q)
        err = float(np.linalg.norm(target[:3, 3] - cur[:3, 3]))
        if err > cfg.max_error:
            raise IKError(f"IK did not converge: position error {err:.4f} m > {cfg.max_error} m")
        return q


class MoveItIK:
    """IK through MoveIt 2's Python API (`moveit_py`), behind the IKAdapter interface.

    Needs a system ROS 2 install with MoveIt (not available from PyPI). `group` is the planning group
    and `tip_link` the end-effector link of the MoveIt config.
    """

    def __init__(
        self, group: str, tip_link: str, node_name: str = "apt_moveit_ik", timeout_s: float = 0.05
    ) -> None:
        try:
            from moveit.core.robot_state import RobotState  # type: ignore[import-not-found]
            from moveit.planning import MoveItPy  # type: ignore[import-not-found]
        except ImportError as e:
            raise IKError(
                "MoveItIK needs MoveIt 2's moveit_py (a system ROS 2 install with moveit); "
                f"it is not importable here ({e}). Use ik_backend:=numerical."
            ) from None
        self._moveit = MoveItPy(node_name=node_name)
        self._model = self._moveit.get_robot_model()
        self._state_cls = RobotState
        self.group, self.tip_link, self.timeout_s = group, tip_link, timeout_s
        self.joint_names = tuple(self._model.get_joint_model_group(group).active_joint_model_names)

    def solve(self, target: np.ndarray, seed: np.ndarray) -> np.ndarray:  # pragma: no cover - needs MoveIt
        from geometry_msgs.msg import Pose

        state = self._state_cls(self._model)
        state.set_joint_group_positions(self.group, np.asarray(seed, dtype=np.float64))
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in target[:3, 3])
        qx, qy, qz, qw = _matrix_to_quat(target[:3, :3])
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
        if not state.set_from_ik(self.group, pose, self.tip_link, self.timeout_s):
            raise IKError(f"MoveIt IK found no solution for {target[:3, 3]}")
        return np.asarray(state.get_joint_group_positions(self.group), dtype=np.float64)


def _matrix_to_quat(r: np.ndarray) -> tuple[float, float, float, float]:
    w = np.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    return float(x), float(y), float(z), float(w)


def pose10_to_matrix(a: np.ndarray) -> tuple[np.ndarray, float]:
    """10-D action (xyz, 6-D rotation, gripper) -> ((4, 4) pose, gripper)."""
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (10,):
        raise IKError(f"an end-effector action must have 10 values, got shape {a.shape}")
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot6d_to_matrix(a[3:9]), a[:3]
    return t, float(a[9])


def ee_chunk_to_joints(
    ik: IKAdapter,
    chunk: np.ndarray,
    seed: np.ndarray,
    joint_names: tuple[str, ...],
    gripper_joint: str | None = None,
) -> np.ndarray:
    """(H, 10) end-effector chunk -> (H, J) joint chunk in `joint_names` order.

    seed: (J,) current joint positions (contract order). Each pose is seeded with the previous
    solution so the joint path is continuous. The gripper value goes to `gripper_joint` directly.
    """
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != 10:
        raise IKError(f"end-effector chunk must be (H, 10), got {chunk.shape}")
    idx = []
    for n in ik.joint_names:
        if n not in joint_names:
            raise IKError(f"IK joint {n!r} is not in the contract joints {list(joint_names)}")
        idx.append(joint_names.index(n))
    g = joint_names.index(gripper_joint) if gripper_joint else None
    out = np.empty((chunk.shape[0], len(joint_names)))
    cur = np.asarray(seed, dtype=np.float64).copy()
    for h, a in enumerate(chunk):
        pose, grip = pose10_to_matrix(a)
        q = ik.solve(pose, cur[idx])
        cur[idx] = q
        if g is not None:
            cur[g] = grip
        out[h] = cur
    return out
