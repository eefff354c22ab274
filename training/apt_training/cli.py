"""Command-line parsing for the training entry points: every TrainConfig field is a flag.

`--recipe NAME` picks a training preset (debug | cpu-demo | qwen3vl-2b); explicit flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .config import TRAIN_PRESETS, TrainConfig, train_preset


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--recipe", default="debug", choices=sorted(TRAIN_PRESETS), help="training preset")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        if typ is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(typ) is tuple:
            parser.add_argument(flag, dest=f.name, nargs="+", default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=typ, default=None)
    return parser


def parse_config(argv: list[str] | None, prog: str, description: str, **fixed) -> TrainConfig:
    args = vars(build_parser(prog, description).parse_args(argv))
    recipe = args.pop("recipe")
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if v is not None}
    overrides.update(fixed)
    return train_preset(recipe, **overrides)
