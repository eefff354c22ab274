"""Config validation / JSON round trip, presets, and the shared processor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apt_core.model.config import ConfigError, PolicyConfig, get_preset, list_presets
from apt_core.model.processor import Processor, ProcessorError
from apt_core.types import Observation

from .conftest import make_raw_batch, make_stats


@pytest.mark.parametrize("name", ["debug", "tiny-qwen3vl", "cpu-demo", "qwen3vl-2b"])
def test_presets_round_trip_through_json(name):
    cfg = get_preset(name)
    again = PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert set(list_presets()) >= {"debug", "cpu-demo", "qwen3vl-2b", "tiny-qwen3vl"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stage": 3}, "stage"),
        ({"variant": "magic"}, "variant"),
        ({"variant": "token_insertion"}, "single-stage baseline"),
        ({"backbone": {"mode": "half"}}, "backbone.mode"),
        ({"objective": {"kind": "ddpm"}}, "objective.kind"),
        ({"expert": {"style": "act"}}, "expert.style"),
        ({"expert": {"gate": "tanh"}}, "expert.gate"),
        ({"action_space": "ee_pose"}, "ee_pose"),
        ({"joint_names": ("a", "b")}, "joint_names"),
        ({"camera_names": ("front", "front")}, "duplicates"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        get_preset("debug", **changes)


def test_from_dict_rejects_unknown_keys():
    d = get_preset("debug").to_dict()
    d["expert"]["depth"] = 3
    with pytest.raises(ConfigError, match="depth"):
        PolicyConfig.from_dict(d)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("gigantic")


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_normalisation_round_trip(mode):
    cfg = get_preset("debug", norm_mode=mode)
    proc = Processor.from_stats(cfg, make_stats())
    raw = make_raw_batch(3)
    b = proc.process_batch(raw)
    assert torch.allclose(proc.unnormalize_actions(b["actions"]), raw["action"], atol=1e-5)
    st = make_stats()["action"]
    if mode == "mean_std":
        want = (raw["action"] - torch.tensor(st["mean"])) / torch.tensor(st["std"])
    else:
        lo, hi = torch.tensor(st["q01"]), torch.tensor(st["q99"])
        want = 2 * (raw["action"] - lo) / (hi - lo) - 1
    assert torch.allclose(b["actions"], want.float(), atol=1e-5)


def test_processed_batch_layout_and_images():
    cfg = get_preset("debug", crop_scale=0.75)
    proc = Processor.from_stats(cfg, make_stats())
    raw = make_raw_batch(2, img=64)
    b = proc.process_batch(raw)
    assert b["images"].shape == (2, 1, 3, 32, 32) and b["images"].dtype == torch.float32
    assert 0 <= float(b["images"].min()) and float(b["images"].max()) <= 1
    assert b["lang_ids"].shape == (2, 16) and b["lang_mask"].dtype == torch.bool
    assert b["action_history"].shape == (2, 2, 7)
    # without history the current state is held: history equals the state in action units
    assert torch.allclose(
        proc.unnormalize_actions(b["action_history"]),
        raw["observation.state"][:, None].expand(2, 2, 7),
        atol=1e-5,
    )
    # serving = training: an Observation gives the same tensors as the equivalent raw batch
    obs = Observation(
        images={"front": raw["observation.images.front"][0].permute(1, 2, 0).numpy()},
        joint_positions=raw["observation.state"][0].numpy().astype(np.float64),
    )
    s = proc.process_observation(obs, raw["task"][0])
    for k in ("images", "lang_ids", "lang_mask", "state", "action_history"):
        assert torch.allclose(s[k].float(), b[k][:1].float(), atol=1e-6), k


def test_processor_json_round_trip_and_errors():
    cfg = get_preset("debug")
    proc = Processor.from_stats(cfg, make_stats())
    again = Processor.from_dict(cfg, json.loads(json.dumps(proc.to_dict())))
    raw = make_raw_batch(2)
    assert torch.equal(again.process_batch(raw)["actions"], proc.process_batch(raw)["actions"])
    bad = make_stats()
    bad["action"]["std"] = [1.0] * 6
    with pytest.raises(ProcessorError, match=r"stats\['action'\]\['std'\] has 6 values, expected 7"):
        Processor.from_stats(cfg, bad)
    with pytest.raises(ProcessorError, match="observation.state"):
        Processor.from_stats(cfg, {"action": make_stats()["action"]})
    raw = make_raw_batch(2)
    raw["action"] = raw["action"][:, :5]
    with pytest.raises(ProcessorError, match="action has shape"):
        proc.process_batch(raw)
    raw = make_raw_batch(2)
    del raw["observation.images.front"]
    with pytest.raises(ProcessorError, match="observation.images.front"):
        proc.process_batch(raw)
    raw = make_raw_batch(2)
    raw["observation.state"][0, 0] = float("nan")
    with pytest.raises(ProcessorError, match="NaN"):
        proc.process_batch(raw)
