"""How far a recorded dataset's grasp targets sit from the object the gripper shut on.

    python scripts/goal_target_offsets.py DATASET [--lags 3 6]

For a dataset converted from `apt-record-demos` bags (each episode's bag folder is named
`episode_<seed>`), rebuilds every episode's scene from its seed. For the episodes whose first
subtask is a grasp and whose first gripper event is a shut (an episode that starts shut is
skipped), it compares the first frame's goal target, which is the tool at that event, with the
named object's centre: from the measured joints (`dataset_goals`, what `--goal-source state`
trains on), the measured tool a few frames later, and from the commanded joints (`--goal-source
action`). Prints the horizontal distance's median and 90th percentile [cm], the mean offset per
axis and the median height difference. The numbers in docs/experiments.md item 36.
"""

from __future__ import annotations

import argparse

import numpy as np

from apt_core.data.dataset import DemoDataset
from apt_core.data.goals import (
    UrdfChain,
    dataset_goals,
    dataset_gripper_joint,
    gripper_events,
    tool_positions,
)
from apt_core.data.lerobot_v3 import load_v3
from apt_core.sim.env import URDF_PATH, SceneMismatchError, TabletopEnv, recorded_seed, reset_to_recording


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--lags", type=int, nargs="+", default=[3, 6], help="frames after the event, measured")
    ap.add_argument("--split", default="in_distribution", help="the split the episodes were recorded from")
    a = ap.parse_args()
    ds = DemoDataset(a.dataset, chunk_length=1)
    episodes = load_v3(a.dataset).episodes.to_pydict()  # source/bag: where each episode came from
    names = tuple(ds.meta["features"]["observation.state"]["names"])
    # the targets training uses (apt_core.data.goals): an episode's first frame gets its first event's
    measured = dataset_goals(ds, URDF_PATH, tip_link="tcp")
    commanded = dataset_goals(ds, URDF_PATH, tip_link="tcp", source="action").goals
    threshold = measured.info.threshold
    command = ds.action[:, names.index(dataset_gripper_joint(ds))]
    positions = tool_positions(ds.state, names, UrdfChain.from_urdf(URDF_PATH, "base_link", "tcp"))
    rows: dict[str, list[np.ndarray]] = {"measured at the event": [], "commanded at the event": []}
    rows.update({f"measured {k} frames later": [] for k in a.lags})
    env = TabletopEnv()
    skipped = 0
    try:
        for e, source in enumerate(episodes["source/bag"]):
            lo, hi = int(ds.ep_from[e]), int(ds.ep_to[e])
            events = gripper_events(command[lo:hi], threshold)
            no_shut = not len(events) or command[lo + int(events[0])] >= threshold  # first event opens
            if recorded_seed(source) is None or no_shut:
                skipped += 1
                continue
            try:
                reset_to_recording(env, source, ds.tasks[int(ds.task_index[lo])], a.split)
            except SceneMismatchError as err:
                raise SystemExit(f"episode {e}: {err}") from None
            sub = env.task.subtasks[0]
            if sub.family == "push":
                continue
            obj, k = env.body_position(sub.obj), lo + int(events[0])
            rows["measured at the event"].append(measured.goals[lo] - obj)
            rows["commanded at the event"].append(commanded[lo] - obj)
            for lag in a.lags:
                rows[f"measured {lag} frames later"].append(positions[min(k + lag, hi - 1)] - obj)
    finally:
        env.close()
    print(f"{a.dataset}: {len(rows['measured at the event'])} grasp episodes ({skipped} skipped)")
    print(
        "| tool at the first shut event | horizontal to the object, median / p90 [cm] | mean dx, dy [cm] | dz median [cm] |"
    )
    print("| --- | --- | --- | --- |")
    for label, r in rows.items():
        d = np.array(r) * 100.0
        h = np.linalg.norm(d[:, :2], axis=1)
        print(
            f"| {label} | {np.median(h):.2f} / {np.percentile(h, 90):.2f} | "
            f"{d[:, 0].mean():.2f}, {d[:, 1].mean():.2f} | {np.median(d[:, 2]):.2f} |"
        )


if __name__ == "__main__":
    main()
