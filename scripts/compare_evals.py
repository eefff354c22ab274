"""Paired comparison of two policies (or two settings of one) on the same evaluation scenes.

    python scripts/compare_evals.py --a DIR [DIR ...] --b DIR [DIR ...] [--labels A B] [--by family] [--out FILE]

Each DIR is searched (recursively) for the `episodes.csv` files that `python -m
apt_core.sim.evaluate --out DIR` writes. Episodes are paired by (split, scene seed): `evaluate`
runs episode i of a split on scene seed `--seed + i`, so two runs with the same `--seed` and
`--episodes` saw the same scenes. Prints per-split and total successes of both, the discordant
scenes (success under one only) and the exact two-sided McNemar p-value (a binomial test on the
discordant pairs: under "no difference" each is equally likely to favour either side). Only paired
scenes are counted; scenes run on one side only are reported and left out. `--by family` groups the
rows by task family (pick_place, stack, push, chain) instead of split; the pairing stays by scene.
These are the paired numbers in docs/experiments.md (items 22 and 24-27).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

REQUIRED = ("split", "seed", "success", "family")
GROUPS = ("split", "family")  # what the rows of the table are


class Episode(NamedTuple):
    success: bool
    family: str  # task family, "chain" for two-step tasks


@dataclass
class Paired:
    group: str  # a split, a task family or "all"
    n: int = 0
    a: int = 0  # successes of A
    b: int = 0  # successes of B
    only_a: int = 0  # scenes A completed and B did not
    only_b: int = 0


def read_episodes(dirs: list[Path]) -> dict[tuple[str, int], Episode]:
    """(split, seed) -> Episode, from every episodes.csv under `dirs`. A scene found twice, a
    missing column or an unreadable value raises ValueError naming the file (and row)."""
    out: dict[tuple[str, int], Episode] = {}
    where: dict[tuple[str, int], Path] = {}
    files: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file() and d.name == "episodes.csv":
            files.append(d)
        elif d.is_dir():
            found = sorted(d.rglob("episodes.csv"))
            if not found:
                raise ValueError(f"{d}: no episodes.csv under it (is it an evaluate --out folder?)")
            files += found
        else:
            raise ValueError(f"{d}: not a folder or an episodes.csv")
    for f in files:
        with open(f, newline="") as fh:
            rows = csv.DictReader(fh)
            missing = [c for c in REQUIRED if c not in (rows.fieldnames or [])]
            if missing:
                raise ValueError(f"{f}: missing column(s) {missing}; has {rows.fieldnames}")
            for i, row in enumerate(rows, start=2):  # line 1 is the header
                try:
                    key = (row["split"], int(row["seed"]))
                except ValueError:
                    raise ValueError(f"{f}:{i}: seed {row['seed']!r} is not an integer") from None
                if row["success"] not in ("True", "False"):
                    raise ValueError(f"{f}:{i}: success {row['success']!r} is not True or False")
                if key in out:
                    raise ValueError(f"{f}:{i}: scene {key} is also in {where[key]}")
                out[key], where[key] = Episode(row["success"] == "True", row["family"]), f
    return out


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller binomial(n, 1/2) tail, capped at 1."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(
    a: dict[tuple[str, int], Episode], b: dict[tuple[str, int], Episode], by: str = "split"
) -> list[Paired]:
    """Paired counts per split (or per task family of A's episode, `by="family"`), in order of first
    appearance in `a`, then a row "all"."""
    if by not in GROUPS:
        raise ValueError(f"compare: by={by!r}, expected one of {GROUPS}")
    rows: dict[str, Paired] = {}
    total = Paired("all")
    for key, ea in a.items():
        if key not in b:
            continue
        if ea.family != b[key].family:
            raise ValueError(
                f"scene {key}: task family {ea.family!r} in A, {b[key].family!r} in B (not the same task)"
            )
        sa, sb = ea.success, b[key].success
        group = key[0] if by == "split" else ea.family
        for r in (rows.setdefault(group, Paired(group)), total):
            r.n += 1
            r.a += sa
            r.b += sb
            r.only_a += sa and not sb
            r.only_b += sb and not sa
    return [*rows.values(), total]


def table(rows: list[Paired], labels: tuple[str, str], by: str = "split") -> str:
    la, lb = labels
    lines = [
        f"| {by} | scenes | {la} | {lb} | only {la} | only {lb} | exact McNemar p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p = mcnemar_exact(r.only_a, r.only_b)
        name = f"**{r.group}**" if r.group == "all" else r.group
        lines.append(f"| {name} | {r.n} | {r.a} | {r.b} | {r.only_a} | {r.only_b} | {p:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", nargs="+", required=True, type=Path, help="evaluate --out folders of A")
    ap.add_argument("--b", nargs="+", required=True, type=Path, help="evaluate --out folders of B")
    ap.add_argument("--labels", nargs=2, default=("A", "B"), help="column names for A and B")
    ap.add_argument("--by", choices=GROUPS, default="split", help="rows per split or per task family")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    try:
        a, b = read_episodes(args.a), read_episodes(args.b)
        rows = compare(a, b, args.by)
    except (OSError, ValueError) as e:
        print(f"compare_evals: {e}", file=sys.stderr)
        return 2
    unpaired_a, unpaired_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
    if rows[-1].n == 0:
        print("compare_evals: no scene was run by both (same --seed and --episodes?)", file=sys.stderr)
        return 2
    text = table(rows, tuple(args.labels), args.by)
    if unpaired_a or unpaired_b:
        text += f"\n\nLeft out: {unpaired_a} scene(s) run by {args.labels[0]} only, {unpaired_b} by {args.labels[1]} only."
    print(text)
    if args.out:
        from apt_core.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
