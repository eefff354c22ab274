"""Built-in numerical IK on a URDF chain; the 10-D end-effector chunk path; MoveIt's clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apt_core.runtime.ik import (
    IKError,
    MoveItIK,
    NumericalIK,
    UrdfChain,
    ee_chunk_to_joints,
    matrix_to_rot6d,
    rot6d_to_matrix,
)

URDF = Path(__file__).parent / "assets" / "arm6.urdf"
ARM = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")


@pytest.fixture(scope="module")
def chain() -> UrdfChain:
    return UrdfChain.from_urdf(URDF, "base_link", "tool0")


def test_chain_structure_and_fk(chain: UrdfChain) -> None:
    assert chain.joint_names == ARM
    pose, jac = chain.forward(np.zeros(6))
    # straight up: z = 0.1 + 0.05 + 0.25 + 0.22 + 0.06 + 0.05, tool offset 0.05 along x
    assert np.allclose(pose[:3, 3], [0.05, 0, 0.73], atol=1e-6)
    # Jacobian against finite differences
    q = np.array([0.3, -0.4, 0.8, 0.2, -0.5, 0.7])
    p0, jac = chain.forward(q)
    eps = 1e-6
    for k in range(6):
        dq = np.zeros(6)
        dq[k] = eps
        p1, _ = chain.forward(q + dq)
        assert np.allclose((p1[:3, 3] - p0[:3, 3]) / eps, jac[:3, k], atol=1e-4)


def test_ik_recovers_reachable_poses(chain: UrdfChain) -> None:
    ik = NumericalIK(chain)
    rng = np.random.default_rng(0)
    for _ in range(10):
        q_true = rng.uniform(-1.0, 1.0, 6)
        target, _ = chain.forward(q_true)
        q = ik.solve(target, q_true + rng.normal(0, 0.15, 6))
        got, _ = chain.forward(q)
        assert np.linalg.norm(got[:3, 3] - target[:3, 3]) < 1e-3
        assert np.allclose(got[:3, :3], target[:3, :3], atol=1e-2)


def test_unreachable_pose_is_reported(chain: UrdfChain) -> None:
    target = np.eye(4)
    target[:3, 3] = [3.0, 0.0, 0.0]  # far outside the 0.7 m reach
    with pytest.raises(IKError, match="did not converge"):
        NumericalIK(chain).solve(target, np.zeros(6))
    with pytest.raises(IKError, match="finite"):
        NumericalIK(chain).solve(np.full((4, 4), np.nan), np.zeros(6))


def test_ee_chunk_to_joint_chunk_is_continuous(chain: UrdfChain) -> None:
    names = (*ARM, "gripper")
    q0 = np.array([0.1, -0.3, 0.9, 0.4, 0.2, 0.0])
    qs = q0 + np.linspace(0, 1, 12)[:, None] * np.array([0.4, 0.2, -0.3, 0.1, 0.2, 0.3])
    chunk = []
    for q in qs:
        pose, _ = chain.forward(q)
        chunk.append(np.concatenate([pose[:3, 3], matrix_to_rot6d(pose[:3, :3]), [0.02]]))
    joints = ee_chunk_to_joints(NumericalIK(chain), np.array(chunk), np.append(q0, 0.0), names, "gripper")
    assert joints.shape == (12, 7)
    assert np.allclose(joints[:, 6], 0.02)
    assert np.abs(np.diff(joints[:, :6], axis=0)).max() < 0.2  # seeded: no branch flips
    for q, want in zip(joints, chunk):
        pose, _ = chain.forward(q[:6])
        assert np.linalg.norm(pose[:3, 3] - want[:3]) < 1e-3
    with pytest.raises(IKError, match=r"\(H, 10\)"):
        ee_chunk_to_joints(NumericalIK(chain), np.zeros((3, 9)), np.zeros(7), names)


def test_rot6d_roundtrip() -> None:
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    assert np.allclose(rot6d_to_matrix(matrix_to_rot6d(q)), q)


def test_bad_urdf_and_missing_moveit(tmp_path: Path) -> None:
    with pytest.raises(IKError, match="no joint chain"):
        UrdfChain.from_urdf(URDF, "base_link", "nonexistent_link")
    bad = tmp_path / "bad.urdf"
    bad.write_text("<robot")
    with pytest.raises(IKError, match="not valid XML"):
        UrdfChain.from_urdf(bad, "a", "b")
    # moveit_py cannot be installed from PyPI: the adapter must say so instead of failing obscurely
    with pytest.raises(IKError, match="moveit_py"):
        MoveItIK("arm", "tool0")
