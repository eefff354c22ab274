"""Stage 1: learn the language-agnostic vision-action prior pi_p(a | v).

The backbone is frozen, language tokens are masked (the instruction cannot reach the expert), and
the expert has half its layers, fed by the odd tapped backbone layers.

    apt-train-stage1 --recipe debug --dataset data/sim --out-dir runs/apt/stage1
    apt-train-stage1 --recipe cpu-demo --dataset data/sim --out-dir runs/cpu/stage1
    torchrun --nproc_per_node 2 -m apt_training.stage1 --recipe debug --dataset data/sim --out-dir runs/ddp/stage1

Re-running the same command after a kill resumes from the newest checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from .cli import parse_config
from .config import TrainConfig
from .loop import train


def main(cfg: TrainConfig) -> Path:
    """Train stage 1 with `cfg` (its stage must be 1); returns the final checkpoint folder."""
    if cfg.stage != 1:
        raise ValueError(f"stage1.main needs cfg.stage == 1, got {cfg.stage}")
    return train(cfg)


def cli(argv: list[str] | None = None) -> None:
    main(parse_config(argv, "apt-train-stage1", __doc__.splitlines()[0], stage=1))


if __name__ == "__main__":
    cli()
