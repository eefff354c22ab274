"""Rewrite the build-machine Python paths that the ROS 2 PyPI wheels hard-code in their CMake files.

The wheels are built in a manylinux container whose Python lives in /opt/python/cp311-cp311; their
exported `*__rosidl_generator_pyExport.cmake` files point at its include and numpy include dirs, so a
local `colcon build` of an interface package fails to find Python.h. We point them at this
interpreter's include dir and numpy's. Safe to run any number of times (see ../shared/ENVIRONMENT.md).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

BUILD_PREFIX = "/opt/python/cp311-cp311"


def fix(prefix: Path) -> int:
    import numpy

    replacements = {
        f"{BUILD_PREFIX}/include/python3.11": sysconfig.get_paths()["include"],
        f"{BUILD_PREFIX}/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
    }
    changed = 0
    for path in (prefix / "share").rglob("*.cmake"):
        text = path.read_text()
        if BUILD_PREFIX not in text:
            continue
        new = text
        for old, repl in replacements.items():
            new = new.replace(old, repl)
        if new != text:
            tmp = path.with_suffix(".cmake.tmp")
            tmp.write_text(new)
            os.replace(tmp, path)
            changed += 1
    return changed


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    print(f"fix_ros_cmake: rewrote {fix(root)} CMake files under {root}/share")
