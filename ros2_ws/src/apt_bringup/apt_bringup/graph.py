"""The node graph of the APT stack and its launch arguments: the one source of truth.

Both `launch/robot.launch.py` (real ROS 2: `ros2 launch apt_bringup robot.launch.py sim:=true`) and
`apt-launch` (this module's `main`, for the PyPI-wheel setup without `launch`/`ros2`) resolve the
same arguments into the same nodes, parameter files and parameter overrides.

    args (name:=value) --resolve()--> [NodeSpec(package, executable, module, params_files, overrides)]
        |                                   |                                  |
        robot.launch.py: launch_ros Node    apt-launch: python -m <module> --ros-args --params-file ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "apt_bringup"


@dataclass(frozen=True)
class LaunchArg:
    name: str  # launch argument name (`name:=value`)
    default: str  # default value (launch arguments are strings)
    description: str  # shown by `ros2 launch ... --show-args` and `apt-launch --help`


DEFAULT_POLICY = Path("policies") / "default"  # the shipped default policy, under the share dir

ARGS: tuple[LaunchArg, ...] = (
    LaunchArg(
        "sim",
        "true",
        "true: start the MuJoCo simulated arm (apt_sim); false: a real robot provides the topics",
    ),
    LaunchArg(
        "checkpoint",
        "",
        "Policy checkpoint directory; empty = the shipped default policy (policies/default), "
        "unless policy_factory is set",
    ),
    LaunchArg("policy_factory", "", "Instead of a checkpoint: 'module:callable' returning a ChunkPolicy"),
    LaunchArg("contract", "", "Topic contract YAML; empty = the simulated arm's contract"),
    LaunchArg("controller_topic", "", "JointTrajectoryController command topic; empty = the contract's"),
    LaunchArg("params_file", "", "Extra parameter YAML for apt_policy, applied after config/policy.yaml"),
    LaunchArg("rviz", "false", "true: start RViz with rviz/apt.rviz (not available in the PyPI-wheel setup)"),
    LaunchArg("device", "cpu", "Torch device of the policy: cpu | cuda"),
)
ARG_NAMES = tuple(a.name for a in ARGS)


@dataclass(frozen=True)
class NodeSpec:
    name: str  # node name
    package: str  # ROS package (launch_ros Node package=)
    executable: str  # console script installed by the package (launch_ros Node executable=)
    module: str  # Python module with main(), for apt-launch (`python -m module`)
    params_files: tuple[str, ...] = ()  # parameter YAMLs, in order (later ones win)
    overrides: dict[str, Any] = field(default_factory=dict)  # parameters set from launch arguments
    ros_args: tuple[str, ...] = ()  # extra arguments after --ros-args (rviz: -d config)


def share_dir() -> Path:
    """apt_bringup's share directory: the ament index when installed with colcon, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory  # type: ignore[import-not-found]

        p = Path(get_package_share_directory(PACKAGE))
        if (p / "config").is_dir():
            return p
    except Exception:  # no ament index (PyPI wheels, editable install): use the source tree
        pass
    return Path(__file__).resolve().parents[1]


def _truthy(v: str, name: str) -> bool:
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"launch argument {name}:={v!r} must be true or false")


def resolve(args: dict[str, str], share: Path | None = None) -> list[NodeSpec]:
    """Resolve launch arguments (missing ones take their defaults) into the nodes to start."""
    unknown = set(args) - set(ARG_NAMES)
    if unknown:
        raise ValueError(f"unknown launch argument(s) {sorted(unknown)}; known: {list(ARG_NAMES)}")
    a = {x.name: x.default for x in ARGS} | {k: str(v) for k, v in args.items()}
    share = share or share_dir()
    cfg = share / "config"
    nodes: list[NodeSpec] = []
    if _truthy(a["sim"], "sim"):
        nodes.append(
            NodeSpec(
                "apt_sim",
                "apt_sim",
                "apt-sim",
                "apt_sim.sim_node",
                (str(cfg / "sim.yaml"),),
                {"contract": a["contract"]},
            )
        )
    policy_files = [str(cfg / "policy.yaml")]
    if a["params_file"]:
        if not Path(a["params_file"]).is_file():
            raise ValueError(f"params_file:={a['params_file']} does not exist")
        policy_files.append(a["params_file"])
    over: dict[str, Any] = {"contract": a["contract"], "device": a["device"]}
    if a["checkpoint"]:
        over["checkpoint"] = a["checkpoint"]
    elif not a["policy_factory"] and (share / DEFAULT_POLICY / "meta.json").is_file():
        over["checkpoint"] = str(share / DEFAULT_POLICY)
    if a["policy_factory"]:
        over["policy_factory"] = a["policy_factory"]
    if a["controller_topic"]:
        over["controller_topic"] = a["controller_topic"]
    nodes.append(
        NodeSpec(
            "apt_policy", "apt_policy", "apt-policy", "apt_policy.policy_node", tuple(policy_files), over
        )
    )
    if _truthy(a["rviz"], "rviz"):
        nodes.append(
            NodeSpec("rviz2", "rviz2", "rviz2", "", (), {}, ("-d", str(share / "rviz" / "apt.rviz")))
        )
    return nodes


def check_params_file(path: str | Path, node: str) -> dict[str, Any]:
    """Load a ROS parameter YAML and return `node`'s ros__parameters (or {}), validating the layout."""
    p = Path(path)
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: top level must be a mapping of node names")
    for name, body in data.items():
        if not isinstance(body, dict) or "ros__parameters" not in body:
            raise ValueError(f"{p}: entry {name!r} needs a 'ros__parameters' mapping")
    block = data.get(node) or data.get(f"/{node}") or data.get("/**") or {}
    return dict(block.get("ros__parameters", {})) if block else {}


def command(spec: NodeSpec, python: str = sys.executable) -> list[str]:
    """The command line apt-launch runs for a node (same files and overrides as the launch file)."""
    if not spec.module:
        raise ValueError(f"{spec.name} has no Python module: it cannot be started without ROS 2's launch")
    cmd = [python, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    for f in spec.params_files:
        cmd += ["--params-file", f]
    for k, v in spec.overrides.items():
        cmd += ["-p", f"{k}:={_param_str(v)}"]
    return cmd + list(spec.ros_args)


def _param_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v == "":
        return "''"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    """apt-launch: start the graph without `ros2 launch`. Arguments as in the launch file (name:=value)."""
    ap = argparse.ArgumentParser(
        prog="apt-launch",
        description="Start the APT node graph (same as `ros2 launch apt_bringup robot.launch.py`).",
        epilog="arguments:\n"
        + "\n".join(f"  {a.name}:=  (default {a.default!r}) {a.description}" for a in ARGS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("assignments", nargs="*", help="name:=value launch arguments")
    ap.add_argument("--print", action="store_true", help="print the commands and exit")
    ns = ap.parse_args(argv)
    args = {}
    for s in ns.assignments:
        if ":=" not in s:
            ap.error(f"expected name:=value, got {s!r}")
        k, v = s.split(":=", 1)
        args[k] = v
    try:
        specs = resolve(args)
    except ValueError as e:
        ap.error(str(e))
    runnable = []
    for spec in specs:
        if not spec.module:
            exe = shutil.which(spec.executable)  # e.g. rviz2 from a system ROS 2 install
            if exe is None:
                print(
                    f"[apt-launch] skipping {spec.name}: needs a system ROS 2 install (not in the PyPI wheels)"
                )
                continue
            runnable.append((spec, [exe, *spec.ros_args]))
            continue
        runnable.append((spec, command(spec)))
    if ns.print:
        for spec, cmd in runnable:
            print(f"{spec.name}: {' '.join(cmd)}")
        return 0
    return _run(runnable)


def _run(runnable: list[tuple[NodeSpec, list[str]]]) -> int:
    procs: list[tuple[NodeSpec, subprocess.Popen]] = []

    def pump(name: str, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()

    for spec, cmd in runnable:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=pump, args=(spec.name, p.stdout), daemon=True).start()
        procs.append((spec, p))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rc = 0
    while not stop.is_set():
        for spec, p in procs:
            if p.poll() is not None:
                print(f"[apt-launch] {spec.name} exited with {p.returncode}; stopping the graph")
                rc = p.returncode or 1
                stop.set()
        time.sleep(0.2)
    for _, p in procs:  # SIGINT lets rclpy shut down cleanly; SIGKILL after 10 s
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    deadline = time.monotonic() + 10
    for _, p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    return rc


if __name__ == "__main__":
    sys.exit(main())
