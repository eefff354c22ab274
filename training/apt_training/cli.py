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


def field_value(name: str, text: str) -> object:
    """`text` as the value of TrainConfig field `name`, typed as its flag would be: a bool from
    true/false/1/0, a tuple from comma-separated items. ValueError names the field and the text."""
    typ = typing.get_type_hints(TrainConfig)[name]
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if typing.get_origin(typ) is tuple:
            return tuple(v for v in text.split(",") if v)
        return typ(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a valid {getattr(typ, '__name__', typ)}") from None


def parse_config(argv: list[str] | None, prog: str, description: str, **fixed) -> TrainConfig:
    args = vars(build_parser(prog, description).parse_args(argv))
    recipe = args.pop("recipe")
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if v is not None}
    overrides.update(fixed)
    return train_preset(recipe, **overrides)
