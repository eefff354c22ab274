"""PNG plots of a run's metrics (matplotlib, headless)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill; the rest of the file is intact
    return rows


def plot_run(run_dir: Path) -> list[Path]:
    """Write losses.png (and eval.png when evaluations were logged) into `run_dir`."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    written: list[Path] = []
    train = [r for r in rows if r.get("kind") == "train"]
    if train:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1.2, label="train loss")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(run_dir.name)
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, run_dir / "losses.png"))
    evals = [r for r in rows if r.get("kind") == "eval"]
    if evals:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        splits = sorted({k[len("success/") :] for r in evals for k in r if k.startswith("success/")})
        for split in splits:
            pts = [(r["step"], r[f"success/{split}"]) for r in evals if f"success/{split}" in r]
            ax.plot(*zip(*pts, strict=True), marker="o", label=split)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("success rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, run_dir / "eval.png"))
    return written


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
