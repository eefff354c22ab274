"""TabletopEnv: the MuJoCo tabletop arm, ROS-free.

    env = TabletopEnv(image_size=128)
    obs = env.reset(seed=3, split="paraphrase")      # Observation (images, joint_positions, stamp)
    env.task.instruction                               # "drop the red brick inside the blue dish"
    env.step(targets)                                  # (7,) joint targets, one control period
    env.success()                                      # ground truth from the physics state

Joints (contract order): shoulder_pan, shoulder_lift, elbow, wrist_1, wrist_2, wrist_3 [rad] and
gripper = finger opening [m] in [0, 0.08]. Position actuators track the targets; within a control
period the arm setpoint moves linearly from the previous target to the new one (what a
JointTrajectoryController does between two points), the gripper setpoint jumps.
Physics runs at 500 Hz (2 ms); 10 Hz control = 50 physics steps per `step`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from pathlib import Path

# Offscreen rendering on CPU needs EGL (Mesa llvmpipe); must be set before mujoco loads a GL backend.
os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

from apt_core.contract import Contract, load_contract
from apt_core.sim import tasks as T
from apt_core.sim.disturbance import JointDisturbance
from apt_core.sim.ik import ArmIK, top_down_rotation
from apt_core.types import Observation

ASSETS = Path(__file__).parent / "assets"
MJCF_PATH = ASSETS / "tabletop_arm.xml"
URDF_PATH = ASSETS / "tabletop_arm.urdf"
ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
JOINT_NAMES = (*ARM_JOINTS, "gripper")
GRIPPER_MAX = 0.08  # full finger opening [m]
GRIPPER_SHUT = GRIPPER_MAX / 2  # an opening [m] (commanded or measured) below this counts as shut


class SceneMismatchError(ValueError):
    """Demonstrations were recorded in another version of the simulated scene than the current one."""


def scene_fingerprint() -> str:
    """Short hash of the MJCF scene (robot, objects, cameras, lights). Recordings carry it in their
    bag metadata (custom_data `sim_scene`) and datasets in meta/apt.json, so that a policy trained
    on one scene is not silently evaluated in another: a moved camera alone makes a trained policy
    fail (it sees a view it never saw), and nothing else would say why."""
    return hashlib.sha256(MJCF_PATH.read_bytes()).hexdigest()[:12]


def check_dataset_scene(dataset_dir: str | Path) -> str:
    """Raise SceneMismatchError when the dataset was recorded in another scene than the current one.

    Returns "" when it matches, or a warning when the dataset does not say (recorded before the
    fingerprint existed, or on a real robot): then nothing can be checked."""
    meta = Path(dataset_dir) / "meta" / "apt.json"
    try:
        scenes = json.loads(meta.read_text()).get("sim_scene", [])
    except (OSError, ValueError) as e:
        return f"cannot read {meta} ({e}); the simulator scene of the data is unknown"
    if not scenes:
        return f"{dataset_dir} does not record its simulator scene; cannot check it matches this one"
    current = scene_fingerprint()
    if list(scenes) != [current]:
        raise SceneMismatchError(
            f"{dataset_dir} was recorded in simulator scene(s) {list(scenes)}, but {MJCF_PATH.name} is "
            f"now {current!r}: the robot, objects or camera changed since, and a policy trained on it "
            "would be evaluated on a scene it never saw. Record the demonstrations again."
        )
    return ""


def recorded_seed(bag: str) -> int | None:
    """The scene seed in a recorded episode's bag name (`episode_<seed>`, as apt-record-demos names
    them); None when the name holds none."""
    m = re.search(r"episode_0*(\d+)", bag)
    return None if m is None else int(m.group(1))


def reset_to_recording(env: TabletopEnv, bag: str, instruction: str, split: str) -> None:
    """Reset `env` to the scene a recorded episode was made in: the seed from its bag's name, drawn
    from `split`, checked against the `instruction` the recording holds. SceneMismatchError names
    the bag when its name holds no seed or the scene asks another instruction (another split)."""
    seed = recorded_seed(bag)
    if seed is None:
        raise SceneMismatchError(f"{bag}: no scene seed in its bag's name")
    env.reset(seed, split)
    if env.task.instruction != instruction:
        raise SceneMismatchError(
            f"{bag}: the scene of seed {seed} asks {env.task.instruction!r}, the dataset "
            f"{instruction!r}; wrong --split?"
        )


# Elbow-up pose above the table centre with the gripper pointing down and open.
HOME = np.array([0.0, 0.35, 1.45, 1.3416, 0.0, 0.0, GRIPPER_MAX])

# Missed-grasp starts (TabletopEnv(missed_grasp=...)): the shut, empty gripper's TCP is placed this
# far from the named object's centre, horizontally [m] and above the table [m].
MISS_RADIUS = (0.035, 0.09)
MISS_HEIGHT = (0.03, 0.12)
MISS_NEAR = ("named", "any")  # beside which object (TabletopEnv(missed_grasp_near=...))


class TabletopEnv:
    """The simulated robot: MuJoCo physics, a task from `tasks`, offscreen camera rendering."""

    def __init__(
        self,
        image_size: int | tuple[int, int] | None = None,
        cameras: tuple[str, ...] | None = None,
        contract: Contract | None = None,
        render: bool = True,
        disturbance: float = 0.0,
        missed_grasp: float = 0.0,
        missed_grasp_near: str = "named",
    ) -> None:
        """image_size: square side or (width, height) [px], default from the contract (128).
        cameras: MJCF camera names to render into observations, default the contract's cameras.
        render: False skips rendering in observation() (physics-only use, e.g. benchmarks).
        disturbance: standard deviation [rad] of the DART-style setpoint noise on the arm joints
        (`apt_core.sim.disturbance`), for recording demonstrations; 0 = none.
        missed_grasp: share of resets (drawn from the scene seed) that start the arm as after a
        missed grasp: gripper shut on nothing, a few cm beside the object the first subtask grasps
        (`missed_grasp_start`), for recording demonstrations of opening and grasping again; 0 = none.
        missed_grasp_near: "named" starts beside the object to grasp; "any" beside an object of the
        scene drawn from the seed (the named one among them), so that the object beside the gripper
        does not tell which one to grasp (docs/experiments.md, item 23).
        """
        self.contract = contract or load_contract()
        if tuple(self.contract.joint_names) != JOINT_NAMES:
            raise ValueError(f"contract joints {self.contract.joint_names} != sim joints {JOINT_NAMES}")
        if image_size is None:
            self.width, self.height = self.contract.image_width, self.contract.image_height
        elif isinstance(image_size, int):
            self.width = self.height = image_size
        else:
            self.width, self.height = image_size
        if not (8 <= self.width <= 640 and 8 <= self.height <= 480):
            raise ValueError(f"image_size {self.width}x{self.height} outside 8..640 x 8..480")
        self.model = mujoco.MjModel.from_xml_path(str(MJCF_PATH))
        self.data = mujoco.MjData(self.model)
        self.cameras = tuple(cameras) if cameras is not None else self.contract.camera_names
        for cam in self.cameras:
            if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                raise ValueError(f"camera {cam!r} not in the MJCF (have 'front', 'top')")
        self.render_enabled = render
        self._renderer: mujoco.Renderer | None = None
        self._renderer_thread = 0
        self.dt = self.contract.dt
        self.disturbance = JointDisturbance(disturbance, dt=self.dt) if disturbance != 0 else None
        if not (math.isfinite(missed_grasp) and 0.0 <= missed_grasp <= 1.0):
            raise ValueError(f"missed_grasp is a share of episodes in [0, 1], got {missed_grasp}")
        self.missed_grasp = float(missed_grasp)
        if missed_grasp_near not in MISS_NEAR:
            raise ValueError(f"missed_grasp_near must be one of {MISS_NEAR}, got {missed_grasp_near!r}")
        self.missed_grasp_near = missed_grasp_near
        self.started_missed = False  # whether the last reset started from a missed grasp
        self._ik: ArmIK | None = None
        self.n_substeps = max(1, round(self.dt / self.model.opt.timestep))
        m = self.model
        self._qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in ARM_JOINTS])
        self._fl = m.jnt_qposadr[m.joint("finger_left").id]
        self._fr = m.jnt_qposadr[m.joint("finger_right").id]
        self._ranges = np.array([m.jnt_range[m.joint(j).id] for j in ARM_JOINTS])
        self._pads = {m.geom("left_pad").id, m.geom("right_pad").id}
        self._obj_geoms = {m.geom(n).id: n for n in T.OBJECTS}
        self._target = HOME.copy()
        self.task: T.Task | None = None
        self.layout: T.Layout | None = None
        self._progress = 0  # number of chain subtasks completed in order

    # ----- setup ---------------------------------------------------------------------------------
    def reset(self, seed: int, split: str = "in_distribution", instruction: str | None = None) -> Observation:
        """New scene for `seed` and `split`; `instruction` overrides the drawn task (grammar phrasing)."""
        task, layout = T.make_task(int(seed), split)
        if instruction:
            task = T.task_from_instruction(instruction)
        self.task, self.layout = task, layout
        self._progress = 0
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        if self.disturbance is not None:
            self.disturbance.reset(seed)
        for name, (x, y, yaw) in layout.poses.items():
            ent = T.ENTITIES[name]
            if name in T.OBJECTS:
                adr = m.jnt_qposadr[m.joint(name).id]
                d.qpos[adr : adr + 3] = (x, y, ent.half_height + 0.0005)
                d.qpos[adr + 3 : adr + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
            else:  # static bodies: bowls and zones are moved in the model (they have no joint)
                m.body_pos[m.body(name).id] = (x, y, 0.0)
        start = self.missed_grasp_start(seed) if self.missed_grasp > 0 else None
        self.started_missed = start is not None
        self.place_arm(HOME if start is None else np.concatenate([start, [0.0]]))
        return self.observation()

    def place_arm(self, joints: np.ndarray) -> None:
        """Put the arm at `joints` (7,: six arm joints and the finger opening) and hold it there,
        let the objects settle (0.2 s) and restart the clock: how a reset starts an episode. Also for
        diagnostics that pose the arm in a scene (scripts/pointer_shortcut.py)."""
        m, d = self.model, self.data
        self._target = self.clip_targets(joints)
        d.qpos[self._qadr] = self._target[:6]
        d.qpos[self._fl] = d.qpos[self._fr] = self._target[6] / 2
        self._apply_ctrl(self._target)
        mujoco.mj_forward(m, d)
        for _ in range(100):
            mujoco.mj_step(m, d)
        d.time = 0.0

    def restart_clock(self) -> None:
        """Make the present state an episode's start: simulated time back to 0, objects, arm and
        task progress as they are (a policy start, apt_core.sim.policy_start)."""
        self.data.time = 0.0

    def missed_grasp_start(self, seed: int, near: str | None = None) -> np.ndarray | None:
        """Arm joints (6,) for a start as after a missed grasp, or None (the arm starts at HOME).

        Drawn from the scene seed: with probability `missed_grasp`, when the first subtask grasps
        (pick-and-place, stack), the tool points down with a random yaw, MISS_RADIUS from the named
        object and MISS_HEIGHT above the table, and the gripper is shut on nothing. This is where a
        learned policy often ends after closing a few cm off; the scripted demonstrations otherwise
        never show it, nor the way out (open, go back above the object, grasp again). A draw whose
        arm would touch anything is drawn again (8 tries, then None). Needs the objects placed.
        With `missed_grasp_near="any"` the object is drawn from the scene's free objects instead.
        `near` names the object to start beside (a diagnostic)."""
        assert self.task is not None and self.layout is not None
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x315D])
        sub = self.task.subtasks[0]
        if rng.random() >= self.missed_grasp or sub.family not in ("pick_place", "stack"):
            return None
        if near is None and self.missed_grasp_near == "any":
            free = sorted(n for n in T.OBJECTS if n in self.layout.poses)
            near = free[int(rng.integers(len(free)))]
        near = near or sub.obj
        if near not in self.layout.poses:
            raise ValueError(f"no object {near!r} in this scene; it has {sorted(self.layout.poses)}")
        if self._ik is None:
            self._ik = ArmIK(self.model)
        m, d = self.model, self.data
        robot_root = m.body_rootid[m.site("tcp").bodyid]
        x, y, _ = self.layout.poses[near]
        for _ in range(8):
            r, a = rng.uniform(*MISS_RADIUS), rng.uniform(-math.pi, math.pi)
            p = np.array([x + r * math.cos(a), y + r * math.sin(a), rng.uniform(*MISS_HEIGHT)])
            q, err = self._ik.solve(p, top_down_rotation(rng.uniform(-math.pi / 2, math.pi / 2)), HOME[:6])
            if err > 2e-3:
                continue
            d.qpos[self._qadr] = q
            d.qpos[self._fl] = d.qpos[self._fr] = 0.0
            mujoco.mj_forward(m, d)
            touching = any(
                robot_root in (m.body_rootid[m.geom_bodyid[c.geom1]], m.body_rootid[m.geom_bodyid[c.geom2]])
                for c in d.contact[: d.ncon]
            )
            if not touching:
                return q
        return None

    # ----- control -------------------------------------------------------------------------------
    def clip_targets(self, targets: np.ndarray) -> np.ndarray:
        """Validate a (7,) target vector and clip it into the joint limits."""
        t = np.asarray(targets, dtype=np.float64).reshape(-1)
        if t.shape != (7,):
            raise ValueError(f"joint targets must have shape (7,) for {JOINT_NAMES}, got {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError(f"joint targets contain NaN/inf: {t}")
        out = t.copy()
        out[:6] = np.clip(t[:6], self._ranges[:, 0], self._ranges[:, 1])
        out[6] = np.clip(t[6], 0.0, GRIPPER_MAX)
        return out

    def _apply_ctrl(self, t: np.ndarray) -> None:
        arm = t[:6]
        if self.disturbance is not None:  # beneath the controller: commands stay clean
            arm = np.clip(arm + self.disturbance.at(self.time), self._ranges[:, 0], self._ranges[:, 1])
        self.data.ctrl[:6] = arm
        self.data.ctrl[6] = t[6] / 2  # per-finger setpoint

    def step(self, joint_targets: np.ndarray) -> None:
        """Advance one control period (1/rate) tracking `joint_targets` (7,); see module docstring."""
        new = self.clip_targets(joint_targets)
        old = self._target
        for i in range(self.n_substeps):
            a = (i + 1) / self.n_substeps
            cmd = new.copy()
            cmd[:6] = old[:6] + a * (new[:6] - old[:6])
            self._apply_ctrl(cmd)
            mujoco.mj_step(self.model, self.data)
        self._target = new
        self._update_progress()

    def step_physics(self, setpoint: np.ndarray, n_steps: int = 1) -> None:
        """Low-level: hold `setpoint` (7,) for n physics steps (used by the JTC in the ROS node)."""
        t = self.clip_targets(setpoint)
        self._apply_ctrl(t)
        for _ in range(n_steps):
            mujoco.mj_step(self.model, self.data)
        self._target = t

    def _update_progress(self) -> None:
        if self.task is None:
            return
        s = self.scene_state()
        while self._progress < len(self.task.subtasks) and T.subtask_success(
            self.task.subtasks[self._progress], s
        ):
            self._progress += 1

    # ----- state ---------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Simulated time since reset [s]."""
        return float(self.data.time)

    @property
    def physics_dt(self) -> float:
        return float(self.model.opt.timestep)

    def joint_positions(self) -> np.ndarray:
        """(7,) measured positions in contract order (gripper = finger opening [m])."""
        q = np.empty(7)
        q[:6] = self.data.qpos[self._qadr]
        q[6] = self.data.qpos[self._fl] + self.data.qpos[self._fr]
        return q

    def joint_velocities(self) -> np.ndarray:
        m = self.model
        v = np.empty(7)
        v[:6] = [self.data.qvel[m.jnt_dofadr[m.joint(j).id]] for j in ARM_JOINTS]
        v[6] = (
            self.data.qvel[m.jnt_dofadr[m.joint("finger_left").id]]
            + self.data.qvel[m.jnt_dofadr[m.joint("finger_right").id]]
        )
        return v

    def body_position(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def body_yaw(self, name: str) -> float:
        w, x, y, z = self.data.body(name).xquat
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    def tcp_position(self) -> np.ndarray:
        return self.data.site("tcp").xpos.copy()

    def held_objects(self) -> frozenset[str]:
        """Objects in contact with a finger pad right now."""
        held = set()
        for c in self.data.contact[: self.data.ncon]:
            g1, g2 = int(c.geom1), int(c.geom2)
            if g1 in self._pads and g2 in self._obj_geoms:
                held.add(self._obj_geoms[g2])
            elif g2 in self._pads and g1 in self._obj_geoms:
                held.add(self._obj_geoms[g1])
        return frozenset(held)

    def scene_state(self) -> T.SceneState:
        return T.SceneState(
            positions={n: self.body_position(n) for n in T.ENTITIES}, held=self.held_objects()
        )

    def subtask_progress(self) -> int:
        """How many subtasks of the current task have been completed in order."""
        return self._progress

    def current_subtask(self) -> T.Subtask:
        """The first subtask not yet completed (the last one once all are); needs a reset env."""
        if self.task is None:
            raise RuntimeError("current_subtask needs a reset environment")
        return self.task.subtasks[min(self._progress, len(self.task.subtasks) - 1)]

    def success(self) -> bool:
        """True when every subtask was done in order and all still hold now."""
        if self.task is None:
            return False
        self._update_progress()
        if self._progress < len(self.task.subtasks):
            return False
        s = self.scene_state()
        return all(T.subtask_success(sub, s) for sub in self.task.subtasks)

    # ----- rendering -----------------------------------------------------------------------------
    def render(self, camera: str = "front") -> np.ndarray:
        """(H, W, 3) uint8 RGB image from an MJCF camera."""
        # An EGL context is current in one thread only: keep one renderer per calling thread
        # (the ROS node may be built in one thread and spun in another).
        tid = threading.get_ident()
        if self._renderer is None or self._renderer_thread != tid:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
            self._renderer_thread = tid
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render().copy()

    def observation(self) -> Observation:
        images = {c: self.render(c) for c in self.cameras} if self.render_enabled else {}
        return Observation(images=images, joint_positions=self.joint_positions(), stamp=self.time)

    def camera_intrinsics(self, camera: str = "front") -> np.ndarray:
        """3x3 pinhole matrix K of a camera at the rendered size (for CameraInfo)."""
        fovy = math.radians(float(self.model.cam_fovy[self.model.camera(camera).id]))
        f = 0.5 * self.height / math.tan(fovy / 2)
        return np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1.0]])

    def close(self) -> None:
        if self._renderer is not None and self._renderer_thread == threading.get_ident():
            self._renderer.close()
        self._renderer = None
