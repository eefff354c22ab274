"""Write one benchmark's markdown table into its own section of docs/benchmarks.md.

Each benchmark script owns a section delimited by `<!-- bench:NAME -->` markers, so scripts can be
rerun independently without overwriting each other's results. The file is replaced atomically.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

BENCH_FILE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every table below is written by a script under `scripts/` (named in its section); rerun it to\n"
    "refresh the section. Medians and ratios come from one run on the machine named there.\n"
)


def machine_line() -> str:
    return (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}."
    )


def write_section(name: str, title: str, body: str, path: Path = BENCH_FILE) -> Path:
    """Replace (or append) the section `name` of the benchmarks file with `title` and `body`."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{begin}\n## {title}\n\n{machine_line()}\n\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """Render rows as a GitHub markdown table (also fine to print to a terminal)."""
    cells = [[str(c) for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def placeholder_stats(j: int, std: float = 1.0, bound: float = 3.0, q: float = 2.0) -> dict:
    """Placeholder dataset statistics for j joints (zero mean; min/max at -/+bound, q01/q99 at -/+q):
    enough to build a Processor for models with untrained or probe-only weights. The defaults are
    unit statistics, where the values do not matter."""
    e = {
        "mean": [0.0] * j,
        "std": [std] * j,
        "min": [-bound] * j,
        "max": [bound] * j,
        "q01": [-q] * j,
        "q99": [q] * j,
    }
    return {"observation.state": e, "action": dict(e)}
