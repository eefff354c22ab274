# Source this file to work in the APT environment: `source scripts/env.sh`.
# Activates .venv (made by scripts/setup.sh) and sets ROS 2 defaults for a single machine.
_apt_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
# shellcheck disable=SC1091
source "${APT_VENV:-$_apt_root/.venv}/bin/activate"
# Keep DDS discovery on this machine unless the user chose otherwise (Kilted ignores ROS_LOCALHOST_ONLY).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# MuJoCo renders offscreen through EGL (Mesa llvmpipe on CPU-only machines).
export MUJOCO_GL="${MUJOCO_GL:-egl}"
# No model hub at run time: every model comes from a local path or a PyPI package.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export APT_ROOT="$_apt_root"
unset _apt_root
