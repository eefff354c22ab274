"""Grounding targets taken from the demonstrations themselves: where the tool was at the next
gripper event (or at the end of the episode).

A pick-and-place demo closes the gripper on the object the instruction names and opens it where
the instruction says to put it. So the tool position (forward kinematics of the recorded joints)
at the frame where the commanded gripper next changes state tells where, in the scene, the words
point. Training can ask the expert to predict it from the frame it is at (an auxiliary loss,
`TrainConfig.goal_weight`), which rewards reading the instruction against the image instead of
following the layout. Nothing here is sim-specific: it needs a URDF, the tool link and the
gripper joint, which a real robot's demonstrations have too.

    goals, valid, info = dataset_goals(dataset, urdf, tip_link="tcp")

Frame t of an episode gets the position at its first key frame at or after t. Key frames are the
gripper events and the episode's last frame: that is where a push ends, and the gripper of a push
may never change state. An event is a frame whose commanded gripper value is on the other side of
`threshold` (default: the middle of the dataset's gripper range) from the frame before it.

The scripted expert shuts the gripper where a push stroke starts, behind the object (the shut
fingers are the paddle), so that gripper event says where the object to push is. A push that runs
shut from the first frame (the expert's before 2026-12-02, or a teleoperator who never opens) has
no gripper event where it matters: its only key frame is where the push ends, and nothing in the
target says where the object to push is. With `push_travel` > 0 a push stroke also starts a key
frame (`push_contacts`): within a stretch between key frames where the gripper stays shut, the
first run of frames at the stretch's lowest tool height (within `push_tolerance`) along which the
tool travels at least `push_travel` horizontally. A carry also runs shut, but its lowest point is
the place, reached by descending and left by opening, so it has no such stroke.

A push's next key frame after its stroke starts is where the gripper next opens, or the episode's
last frame; a scripted push backs off along its line and rises before either, so during the stroke
the target is often in the air (more than 10 cm up on 54% of the stroke frames of item 33's
held-out pushes: docs/experiments.md item 37). With `push_end` > 0 the stroke's end is a key
frame too: within a shut stretch, the stroke is found as above (travelling at least `push_end`)
and its key frame is its frame farthest (horizontally) from where it began (`push_ends`).

`source` says which joints give the tool position at a key frame: "state", the measured joints
(observation.state), or "action", the commanded ones (the action column, joint positions only). A
real arm lags its command and sags under load: on the simulated arm the measured tool sits 1.5 cm
(median, horizontal) from the named object's centre when the gripper shuts on it, the commanded
one on it (docs/experiments.md item 36). With "action" the target is where the demonstrator sent
the tool, which is what the image shows and what the actions command; the distance that decides
`near` is still the measured tool's.

`valid` is False for the frame of a one-frame episode, and, with `min_distance`, for frames whose tool is
already that close to its target; those frames are `near` instead (they have a target, which a
predictor that does not read the arm's joints should still learn).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from apt_core.runtime.ik import UrdfChain


class GoalError(ValueError):
    """Grounding targets cannot be computed for this dataset; the message says what is missing."""


GOAL_SOURCES = ("state", "action")  # measured or commanded joints give the target (dataset_goals)


@dataclass(frozen=True)
class GoalInfo:
    episodes: int  # episodes in the dataset
    events: int  # gripper events found over all episodes
    episodes_without: int  # episodes with no event (their only key frame is their last frame)
    valid_frames: int  # frames with a target
    frames: int  # all frames
    threshold: float  # gripper command value that separates open from closed
    near_frames: int = 0  # frames with a target that their tool is already within min_distance of
    push_contacts: int = 0  # key frames where a push stroke starts (push_travel > 0)
    push_ends: int = 0  # key frames where a push stroke ends (push_end > 0)

    def line(self) -> str:
        near = f", {self.near_frames} more are near theirs" if self.near_frames else ""
        pushes = f", {self.push_contacts} push contacts" if self.push_contacts else ""
        pushes += f", {self.push_ends} push ends" if self.push_ends else ""
        return (
            f"{self.events} gripper events{pushes} in {self.episodes} episodes "
            f"({self.episodes_without} without one); {self.valid_frames} of {self.frames} frames "
            f"have a target{near} (threshold {self.threshold:.4g})"
        )


class GoalTargets(NamedTuple):
    goals: np.ndarray  # (N, 3) target per frame, base frame [m]
    valid: np.ndarray  # (N,) the frame has a target at least min_distance from its tool
    info: GoalInfo
    near: np.ndarray  # (N,) the frame has a target, but its tool is already within min_distance


def gripper_events(command: np.ndarray, threshold: float) -> np.ndarray:
    """Indices t >= 1 of one episode where `command[t]` is on the other side of `threshold` from
    `command[t - 1]` (closing or opening)."""
    shut = np.asarray(command, np.float64) < threshold
    return np.flatnonzero(shut[1:] != shut[:-1]) + 1


def push_strokes(
    positions: np.ndarray,  # (n, 3) tool position per frame of one episode
    shut: np.ndarray,  # (n,) the commanded gripper is shut
    keys: np.ndarray,  # sorted key frames of the episode (indices into it), the last frame last
    travel: float,  # [m] horizontal travel that makes a low run a push stroke
    tolerance: float,  # [m] height above the stretch's lowest point that still counts as low
) -> list[tuple[int, np.ndarray]]:
    """The push strokes of one episode (see the module docstring), at most one per stretch: (the
    stretch's first frame, the stroke's frames). A stretch runs from a key frame (or the first
    frame) to the next key frame; it counts when the gripper is shut on all its frames but the last
    (a key frame may be the opening event)."""
    out: list[tuple[int, np.ndarray]] = []
    for a, b in zip(np.concatenate([[0], keys[:-1]]).tolist(), keys.tolist(), strict=True):
        if b - a < 2 or not shut[a:b].all():
            continue
        z = positions[a : b + 1, 2]
        low = np.flatnonzero(z <= z.min() + tolerance) + a
        # runs of consecutive low frames; the first that travels far enough is the stroke
        for run in np.split(low, np.flatnonzero(np.diff(low) > 1) + 1):
            xy = positions[run, :2]
            if np.linalg.norm(xy - xy[0], axis=1).max() >= travel:
                out.append((a, run))
                break
    return out


def push_contacts(
    positions: np.ndarray, shut: np.ndarray, keys: np.ndarray, travel: float, tolerance: float
) -> list[int]:
    """Frames where a push stroke starts (`push_strokes`' arguments). A stroke from its stretch's
    first frame has its key frame already."""
    return [int(run[0]) for a, run in push_strokes(positions, shut, keys, travel, tolerance) if run[0] > a]


def push_ends(
    positions: np.ndarray, shut: np.ndarray, keys: np.ndarray, travel: float, tolerance: float
) -> list[int]:
    """Frames where a push stroke ends (`push_strokes`' arguments): the stroke's frame farthest
    (horizontally) from where it started. A scripted or teleoperated push often backs off along
    its line and rises before the gripper opens or the recording stops."""
    out = []
    for _, run in push_strokes(positions, shut, keys, travel, tolerance):
        xy = positions[run, :2]
        out.append(int(run[int(np.argmax(np.linalg.norm(xy - xy[0], axis=1)))]))
    return out


def next_event_goals(
    positions: np.ndarray,  # (N, 3) tool position per frame
    command: np.ndarray,  # (N,) commanded gripper value per frame
    ep_from: np.ndarray,  # (E,) first frame of each episode
    ep_to: np.ndarray,  # (E,) one past the last frame of each episode
    threshold: float,
    push_travel: float = 0.0,
    push_tolerance: float = 0.015,
    push_end: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    """(goals (N, 3), valid (N,), events, episodes without an event, push contacts, push ends); see
    the module docstring. push_travel 0 adds no push-contact key frames, push_end 0 no push-end ones
    (each is the travel [m] that makes a low shut run a push stroke)."""
    n = len(positions)
    goals = np.zeros((n, 3), np.float32)
    valid = np.zeros(n, bool)
    events = without = contacts = ends = 0
    for lo, hi in zip(ep_from.tolist(), ep_to.tolist(), strict=True):
        ev = gripper_events(command[lo:hi], threshold) + lo
        events += len(ev)
        without += len(ev) == 0
        if hi - lo < 2:
            continue
        keys = np.append(ev, hi - 1) if (len(ev) == 0 or ev[-1] != hi - 1) else ev
        shut = np.asarray(command[lo:hi], np.float64) < threshold
        extra: list[int] = []
        if push_travel > 0:
            found = push_contacts(positions[lo:hi], shut, keys - lo, push_travel, push_tolerance)
            contacts += len(found)
            extra += found
        if push_end > 0:
            stroke_ends = push_ends(positions[lo:hi], shut, keys - lo, push_end, push_tolerance)
            found = [f for f in stroke_ends if f + lo not in keys]  # a stroke may end at a key frame
            ends += len(found)
            extra += found
        if extra:
            keys = np.union1d(keys, np.asarray(extra, np.int64) + lo)
        frames = np.arange(lo, hi)
        k = np.searchsorted(keys, frames, side="left")  # the first key frame at or after each frame
        goals[frames] = positions[keys[k]]
        valid[frames] = True
    return goals, valid, events, without, contacts, ends


def tool_positions(state: np.ndarray, joint_names: tuple[str, ...], chain: UrdfChain) -> np.ndarray:
    """(N, 3) position of the chain's tip for each row of `state` (columns in `joint_names`)."""
    missing = [j for j in chain.joint_names if j not in joint_names]
    if missing:
        raise GoalError(
            f"the URDF chain {chain.base_link} -> {chain.tip_link} moves joints {missing} that the "
            f"dataset does not record (it has {list(joint_names)})"
        )
    cols = [joint_names.index(j) for j in chain.joint_names]
    return np.stack([chain.forward(q)[0][:3, 3] for q in state[:, cols].astype(np.float64)]).astype(
        np.float32
    )


def dataset_gripper_joint(dataset, gripper_joint: str = "") -> str:
    """`gripper_joint`, or the dataset contract's `action.gripper_joint`, checked to be one of the
    dataset's joints (GoalError otherwise)."""
    names = tuple(dataset.meta["features"]["observation.state"]["names"])
    if not gripper_joint:
        gripper_joint = str(dataset.contract.get("action", {}).get("gripper_joint", ""))
        if not gripper_joint:
            raise GoalError(
                f"{dataset.root}: the dataset's contract names no action.gripper_joint; pass the gripper joint"
            )
    if gripper_joint not in names:
        raise GoalError(f"gripper joint {gripper_joint!r} is not among the dataset's joints {list(names)}")
    return gripper_joint


def dataset_goals(
    dataset,  # apt_core.data.dataset.DemoDataset
    urdf: str | Path,
    tip_link: str,
    base_link: str = "base_link",
    gripper_joint: str = "",
    threshold: float | None = None,
    min_distance: float = 0.0,
    push_travel: float = 0.0,
    source: str = "state",
    push_end: float = 0.0,
) -> GoalTargets:
    """Grounding targets for every frame of `dataset` (goals (N, 3) in the base frame [m], valid (N,),
    the summary, near (N,)).

    `gripper_joint` defaults to the dataset contract's `action.gripper_joint`; its commanded value
    (the action column) marks the events, and the measured joints (observation.state) give the
    tool position at them. `min_distance` [m] drops the target of frames whose tool is already
    that close to it: late in a reach the target is about where the tool is, which the joint state
    alone tells, so only the earlier frames ask where the words point. Those frames are returned
    as `near`: the goal pointer, which does not read the arm's joints, is trained on them too.
    `push_travel` [m] > 0 also makes the start of each push stroke a key frame, `push_end` [m] > 0
    its end (module docstring).
    `source`: "state" or "action", the joints whose tool position is the target (module docstring)."""
    names = tuple(dataset.meta["features"]["observation.state"]["names"])
    if source not in GOAL_SOURCES:
        raise GoalError(f"goal source {source!r} is not one of {GOAL_SOURCES}")
    if source == "action":
        space = str(dataset.contract.get("action", {}).get("space", ""))
        action_names = tuple(dataset.meta["features"]["action"].get("names") or ())
        if space != "joint_position" or action_names != names:
            raise GoalError(
                f"{dataset.root}: goal source 'action' needs joint-position actions over the state's "
                f"joints; the dataset's actions are {space or 'unnamed'!r} over {list(action_names)}"
            )
    gripper_joint = dataset_gripper_joint(dataset, gripper_joint)
    chain = UrdfChain.from_urdf(urdf, base_link, tip_link)
    command = dataset.action[:, names.index(gripper_joint)]
    if threshold is None:
        threshold = float(0.5 * (command.min() + command.max()))
    positions = tool_positions(dataset.state, names, chain)
    targets = positions if source == "state" else tool_positions(dataset.action, names, chain)
    goals, valid, events, without, contacts, ends = next_event_goals(
        targets,
        command,
        dataset.ep_from,
        dataset.ep_to,
        threshold,
        push_travel=push_travel,
        push_end=push_end,
    )
    near = np.zeros_like(valid)
    if min_distance > 0:
        near = valid & (np.linalg.norm(goals - positions, axis=1) < min_distance)
        valid &= ~near
    info = GoalInfo(
        episodes=len(dataset.ep_from),
        events=events,
        episodes_without=without,
        valid_frames=int(valid.sum()),
        frames=len(valid),
        threshold=threshold,
        near_frames=int(near.sum()),
        push_contacts=contacts,
        push_ends=ends,
    )
    if info.valid_frames == 0:
        raise GoalError(f"{dataset.root}: no frame's tool is {min_distance} m or more from its target")
    if info.events == 0:
        raise GoalError(
            f"{dataset.root}: the gripper joint {gripper_joint!r} never changes state (threshold "
            f"{threshold:.4g}); the targets would only be where episodes end"
        )
    return GoalTargets(goals, valid, info, near)
