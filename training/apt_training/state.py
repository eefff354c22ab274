"""Training state that survives a kill: optimizer, RNG streams and position in the data order.

Saved beside the model checkpoint as `train_state.safetensors` (tensors) + `train_state.json`
(everything else), never pickled. Restoring it and continuing gives the same subsequent losses as
an uninterrupted run (tests/training/test_resume.py).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from apt_core.fileio import atomic_write_text


def save_train_state(folder: Path, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    """Write optimizer + RNG state and `progress` (step, epoch, batch index, ...) into `folder`."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    np_state = np.random.get_state()  # noqa: NPY002 (saved so legacy global draws resume too)
    meta = {
        "progress": progress,
        "param_groups": opt["param_groups"],
        "opt_scalars": scalars,
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "rng_python": _py_state_to_json(random.getstate()),
    }
    tmp = folder / "train_state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "train_state.safetensors")
    atomic_write_text(folder / "train_state.json", json.dumps(meta))


def load_train_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer and RNG state from `folder`; returns the saved progress dict."""
    tensors = load_file(str(folder / "train_state.safetensors"))
    meta = json.loads((folder / "train_state.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["opt_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    npst = meta["rng_numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))  # noqa: NPY002
    random.setstate(_py_state_from_json(meta["rng_python"]))
    return meta["progress"]


def _py_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)
