"""`apt-instruct "..."`: the short form of `ros2 service call /apt/instruct apt_msgs/srv/Instruct`.

    apt-instruct "put the red cube in the blue bowl"            # replace the current task
    apt-instruct --append "then stack the green cube on it"      # queue after the current task
    apt-instruct --wait "pick the cube, then place it"           # block until done (via /apt/status)
    apt-instruct --stop                                          # /apt/stop: stop and hold

Exit status: 0 accepted (and, with --wait, completed), 1 rejected or failed, 2 no policy node.
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from rclpy.node import Node
from std_srvs.srv import Trigger

from apt_msgs.msg import PolicyStatus
from apt_msgs.srv import Instruct


def _call(node: Node, client: object, req: object, timeout: float) -> object | None:
    fut = client.call_async(req)  # type: ignore[attr-defined]
    rclpy.spin_until_future_complete(node, fut, timeout_sec=timeout)
    return fut.result() if fut.done() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="apt-instruct", description=__doc__.split("\n\n")[0])
    ap.add_argument("instruction", nargs="?", default="", help="plain-language instruction")
    ap.add_argument("--append", action="store_true", help="queue after the current task (MODE_APPEND)")
    ap.add_argument("--stop", action="store_true", help="call /apt/stop instead: stop and hold")
    ap.add_argument("--wait", action="store_true", help="wait until the task is no longer active")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the policy node")
    ap.add_argument("--wait-timeout", type=float, default=300.0, help="max seconds for --wait")
    args, ros_args = ap.parse_known_args(argv)
    if not args.stop and not args.instruction:
        ap.error("an instruction is required (or --stop)")
    rclpy.init(args=ros_args)
    node = Node("apt_instruct")
    try:
        if args.stop:
            cli = node.create_client(Trigger, "/apt/stop")
            if not cli.wait_for_service(timeout_sec=args.timeout):
                print("no policy node: /apt/stop is not available", file=sys.stderr)
                return 2
            resp = _call(node, cli, Trigger.Request(), args.timeout)
            print(getattr(resp, "message", "no answer"))
            return 0 if resp is not None and resp.success else 1
        cli = node.create_client(Instruct, "/apt/instruct")
        if not cli.wait_for_service(timeout_sec=args.timeout):
            print("no policy node: /apt/instruct is not available (is apt-policy running?)", file=sys.stderr)
            return 2
        req = Instruct.Request(
            instruction=args.instruction, mode=Instruct.Request.MODE_APPEND if args.append else 0
        )
        resp = _call(node, cli, req, args.timeout)
        if resp is None:
            print("no answer from /apt/instruct", file=sys.stderr)
            return 1
        print(
            f"{'accepted' if resp.accepted else 'rejected'} {resp.task_id}: {resp.message}".replace("  ", " ")
        )
        if not resp.accepted:
            return 1
        if args.wait:
            return _wait(node, resp.task_id, args.wait_timeout)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _wait(node: Node, task_id: str, timeout: float) -> int:
    """Follow /apt/status until task_id is neither active nor queued (the status has no queue ids, so
    a queued task counts as pending while queue_length > 0)."""
    seen: dict[str, PolicyStatus] = {}
    node.create_subscription(PolicyStatus, "/apt/status", lambda m: seen.__setitem__("s", m), 10)
    deadline = time.monotonic() + timeout
    was_active = False
    last_sub = None
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        st = seen.get("s")
        if st is None:
            continue
        if st.task_id == task_id:
            was_active = True
            if st.active_subtask != last_sub:
                last_sub = st.active_subtask
                print(f"  subtask {st.subtask_index + 1}/{st.subtask_count}: {st.active_subtask}")
        elif was_active or (st.queue_length == 0 and st.task_id == ""):
            print(f"done: {task_id}" + (f" (last fault: {st.fault})" if st.fault else ""))
            return 0 if not st.fault or st.state != PolicyStatus.STATE_FAULT else 1
    print(f"timed out after {timeout} s waiting for {task_id}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
