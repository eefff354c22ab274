"""Stage 2: inject language into the pretrained vision-action prior.

Expands the stage-1 checkpoint (stage-1 expert layer i -> stage-2 layer 2i+1, new language layers
in between, every layer fed through its learnable gate) and trains all layers jointly with the
instruction visible; the backbone stays frozen or is finetuned with LoRA / fully (`--backbone-mode`).
Without `--init-from` it trains the stage-2 architecture from scratch: that is the single-stage
baseline (`--variant single_stage`, `knowledge_insulation`). `--variant token_insertion` replaces
gated fusion by language tokens in the expert's sequence, from a stage-1 prior or from scratch.

    apt-train-stage2 --recipe debug --dataset data/sim --init-from runs/apt/stage1/final --out-dir runs/apt/stage2
    apt-train-stage2 --recipe cpu-demo --dataset data/sim --init-from runs/cpu/stage1/final --backbone-mode lora --out-dir runs/cpu/stage2
    apt-train-stage2 --recipe debug --dataset data/sim --variant single_stage --out-dir runs/baseline
    apt-train-stage2 --recipe cpu-demo --dataset data/more --finetune-from ros2_ws/src/apt_bringup/policies/default \
        --goal-weight 0.5 --goal-input --goal-pointer --steps 2000 --out-dir runs/finetune

`--finetune-from` goes on training a stage-2 policy (the shipped default, or your own) on new
demonstrations: its weights and normalisation are kept, the goal flags must be the ones it was
trained with, and the optimiser and learning-rate schedule start afresh.
"""

from __future__ import annotations

from pathlib import Path

from .cli import parse_config
from .config import TrainConfig
from .loop import train


def main(cfg: TrainConfig) -> Path:
    """Train stage 2 with `cfg` (its stage must be 2); returns the final checkpoint folder."""
    if cfg.stage != 2:
        raise ValueError(f"stage2.main needs cfg.stage == 2, got {cfg.stage}")
    if cfg.variant == "apt" and not (cfg.init_from or cfg.finetune_from):
        raise ValueError(
            "APT stage 2 starts from a stage-1 checkpoint (--init-from RUN/stage1/final) or goes on "
            "training a stage-2 one (--finetune-from POLICY)"
        )
    if cfg.variant in ("single_stage", "knowledge_insulation") and cfg.init_from:
        raise ValueError(f"the {cfg.variant} baseline trains from scratch; drop --init-from")
    return train(cfg)


def cli(argv: list[str] | None = None) -> None:
    main(parse_config(argv, "apt-train-stage2", __doc__.splitlines()[0], stage=2))


if __name__ == "__main__":
    cli()
