"""Offscreen rendering on CPU needs EGL; set it before any test module imports mujoco."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
