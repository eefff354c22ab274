#!/usr/bin/env bash
# One-command, idempotent setup of the APT stack on a machine without system ROS 2:
#   .venv (Python 3.11) <- torch==2.13.0 (CPU) <- pinned ROS 2 wheels and Python deps (requirements/)
#   <- CMake path fix for the wheels <- colcon build of ros2_ws/src/apt_msgs into the venv prefix
#   <- editable installs of apt_core, apt_policy, apt_sim, apt_bringup, apt_training.
# Each step is skipped when its inputs are unchanged (hash stamps in .venv/.apt-stamps), so a
# second run takes seconds. Usage: scripts/setup.sh [--force]
# Env: APT_PYTHON (default python3.11), APT_VENV (default <repo>/.venv).
set -euo pipefail

fail() { echo "setup: error: $*" >&2; exit 1; }

# --- 1. prerequisites, checked before anything else so the message is the only output -----------
PYTHON="${APT_PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 \
  || fail "'$PYTHON' not found: install Python 3.11 (Debian/Ubuntu: apt install python3.11 python3.11-venv; or pyenv install 3.11)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null \
  || fail "'$PYTHON' is not Python 3.11 (the ROS 2 PyPI wheels are cp311 only): install Python 3.11 or set APT_PYTHON"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || fail "'$PYTHON' cannot create virtual environments: install python3.11-venv"
command -v cmake >/dev/null 2>&1 || fail "cmake not found: install it (apt install cmake); it builds the apt_msgs interfaces"
command -v g++ >/dev/null 2>&1 || fail "g++ not found: install it (apt install g++); it builds the apt_msgs interfaces"

ROOT="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"
VENV="${APT_VENV:-$ROOT/.venv}"
STAMPS="$VENV/.apt-stamps"
FORCE=0; [[ "${1:-}" == "--force" ]] && FORCE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
t0=$SECONDS

# pip on some machines warns about configured local indexes that do not exist; keep output readable.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -vE "^WARNING: Location '.*' is ignored" || true; return "${PIPESTATUS[0]}"; }
hash_of() { (cd "$ROOT" && cat "$@" 2>/dev/null | sha256sum | cut -c1-16); }
stamp_ok() { [[ $FORCE == 0 && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1.tmp"; mv "$STAMPS/$1.tmp" "$STAMPS/$1"; }
step() { printf 'setup: %-44s' "$1"; }
done_in() { echo "done ($(( SECONDS - $1 )) s)"; }

# --- 2. virtual environment ---------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  s=$SECONDS; step "creating $VENV"; rm -rf "$VENV"; "$PYTHON" -m venv "$VENV"; rm -rf "$STAMPS"; done_in $s
fi

# --- 3. pinned Python dependencies (torch first: a plain 'torch' would pull a multi-GB CUDA build) -
deps_hash=$(hash_of requirements/torch.txt requirements/lock.txt scripts/fix_ros_cmake.py)
if stamp_ok deps "$deps_hash"; then step "python dependencies"; echo "up to date"; else
  s=$SECONDS; step "installing torch (CPU)"
  quiet_pip install -q -r "$ROOT/requirements/torch.txt" >&2 || fail "pip could not install torch from requirements/torch.txt"
  done_in $s
  s=$SECONDS; step "installing ROS 2 wheels and pinned deps"
  quiet_pip install -q -r "$ROOT/requirements/lock.txt" -c "$ROOT/requirements/torch.txt" >&2 \
    || fail "pip could not install requirements/lock.txt (see the pip output above)"
  # The wheels' CMake exports point at the wheel builder's Python; rewrite after every install.
  "$VENV/bin/python" "$ROOT/scripts/fix_ros_cmake.py" "$VENV" >/dev/null
  done_in $s
  stamp_set deps "$deps_hash"
fi

# --- 4. apt_msgs: colcon build into the venv prefix, so the bootstrapper's LD_LIBRARY_PATH finds it -
msgs_hash=$(hash_of $(cd "$ROOT" && find ros2_ws/src/apt_msgs -type f | sort) <<<"$deps_hash")
if stamp_ok msgs "$msgs_hash-$deps_hash" && "$VENV/bin/python" -c 'import apt_msgs.srv' 2>/dev/null; then
  step "apt_msgs interfaces"; echo "up to date"
else
  s=$SECONDS; step "building apt_msgs with colcon"
  log="$ROOT/ros2_ws/log/apt_msgs-build.log"; mkdir -p "${log%/*}"
  if ! (cd "$ROOT/ros2_ws" && VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" \
        "$VENV/bin/colcon" --log-base log build --packages-select apt_msgs --merge-install \
        --install-base "$VENV" --build-base build \
        --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF) >"$log" 2>&1; then
    tail -n 30 "$log" >&2; fail "colcon build of apt_msgs failed; full log: $log"
  fi
  "$VENV/bin/python" -c 'import apt_msgs.srv, apt_msgs.msg, apt_msgs.action' \
    || fail "apt_msgs was built but does not import; see $log"
  done_in $s
  stamp_set msgs "$msgs_hash-$deps_hash"
fi

# --- 5. our Python packages, editable (one code path for training, nodes and tests) -------------
pkgs=(ros2_ws/src/apt_core ros2_ws/src/apt_policy ros2_ws/src/apt_sim ros2_ws/src/apt_bringup training)
pkg_hash=$(hash_of $(for p in "${pkgs[@]}"; do echo "$p/setup.py"; done))
if stamp_ok pkgs "$pkg_hash-$deps_hash"; then step "apt packages (editable)"; echo "up to date"; else
  s=$SECONDS; step "installing apt packages (editable)"
  args=(); for p in "${pkgs[@]}"; do args+=(-e "$ROOT/$p"); done
  quiet_pip install -q --no-deps --no-build-isolation "${args[@]}" >&2 || fail "editable install of the apt packages failed"
  done_in $s
  stamp_set pkgs "$pkg_hash-$deps_hash"
fi

echo "setup: ready in $(( SECONDS - t0 )) s. Activate with: source scripts/env.sh"
