"""Inverse kinematics of the tabletop arm's tool point (damped least squares on MuJoCo Jacobians).

Runs on a private MjData so it never disturbs the simulation. Targets are a TCP position and a
"top-down" orientation: tool z pointing at the table, tool x (the finger axis) at a yaw angle.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")


def top_down_rotation(yaw: float) -> np.ndarray:
    """Rotation matrix (columns = tool x, y, z in world) for a downward tool at `yaw` [rad]."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


class ArmIK:
    """Position + orientation IK for the `tcp` site."""

    def __init__(self, model: mujoco.MjModel) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self._qadr = np.array([model.jnt_qposadr[model.joint(j).id] for j in ARM_JOINTS])
        self._dadr = np.array([model.jnt_dofadr[model.joint(j).id] for j in ARM_JOINTS])
        self._range = np.array([model.jnt_range[model.joint(j).id] for j in ARM_JOINTS])
        self._site = model.site("tcp").id
        self._jp = np.zeros((3, model.nv))
        self._jr = np.zeros((3, model.nv))

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP world position (3,) and rotation (3, 3) for arm joints q (6,)."""
        self.data.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self._site].copy(), self.data.site_xmat[self._site].reshape(3, 3).copy()

    def solve(
        self,
        pos: np.ndarray,
        rot: np.ndarray,
        q_init: np.ndarray,
        iters: int = 100,
        tol: float = 1e-4,
        damping: float = 1e-3,
    ) -> tuple[np.ndarray, float]:
        """Joint angles (6,) reaching (pos, rot) from q_init, and the final position error [m]."""
        q = np.array(q_init, dtype=np.float64).copy()
        err_p = np.inf
        for _ in range(iters):
            p, r = self.fk(q)
            err_p_vec = pos - p
            # Orientation error: 0.5 * sum_i r_i x r_des_i (small-angle axis-angle vector).
            err_r = 0.5 * sum(np.cross(r[:, i], rot[:, i]) for i in range(3))
            err = np.concatenate([err_p_vec, 0.3 * err_r])  # 0.3: ~rad to m weighting
            err_p = float(np.linalg.norm(err_p_vec))
            if err_p < tol and np.linalg.norm(err_r) < 1e-3:
                break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self._site)
            jac = np.vstack([self._jp[:, self._dadr], 0.3 * self._jr[:, self._dadr]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), err)
            q = np.clip(q + np.clip(dq, -0.3, 0.3), self._range[:, 0], self._range[:, 1])
        return q, err_p
