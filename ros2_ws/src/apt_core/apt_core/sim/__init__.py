"""The simulated robot, ROS-free: MuJoCo tabletop arm, tasks + language grammar + splits, scripted
expert, ros2_control JTC semantics, and the in-process evaluation harness.

Modules: `env` (TabletopEnv), `tasks` (grammar, splits, success detectors), `ik`, `expert`
(ScriptedExpert), `jtc` (TrajectoryFollower), `evaluate` (success tables with 95% Wilson CIs).
Importing `apt_core.sim.env` sets MUJOCO_GL=egl when unset (offscreen rendering on CPU).
"""
