"""Real backbones: EfficientNet-Lite0 + MiniLM (shipped weights) and a tiny Qwen3-VL from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apt_core.model.backbone import select_taps
from apt_core.model.checkpoint import load_checkpoint, save_checkpoint
from apt_core.model.config import get_preset
from apt_core.model.lora import LoRALinear
from apt_core.model.policy import APTPolicy
from apt_core.model.processor import Processor
from apt_core.model.text import QwenTokenizer

from .conftest import check_stage1_ignores_language_and_backprops, make_raw_batch, make_stats


def test_select_taps_paper_layout():
    assert select_taps(28, 3) == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]  # Qwen3-VL-2B: 10 taps, 5 in stage 1
    assert select_taps(6, 1) == [1, 2, 3, 4, 5, 6]
    assert select_taps(6, 2) == [4, 6]  # 3 taps -> even count, lowest dropped
    with pytest.raises(ValueError):
        select_taps(2, 3)


def test_lora_starts_as_the_base_layer():
    base = torch.nn.Linear(8, 5)
    lora = LoRALinear(base, rank=2, alpha=4)
    x = torch.randn(3, 8)
    assert torch.equal(lora(x), base(x))
    with torch.no_grad():
        lora.lora_B.fill_(0.1)
    assert not torch.allclose(lora(x), base(x))


def test_efficientnet_lite0_recognises_a_real_photo():
    from matplotlib import cbook
    from PIL import Image

    from apt_core.model.efficientnet import load_efficientnet_lite0

    img = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224)))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        probs = load_efficientnet_lite0()(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    # ImageNet 652 = "military uniform" (Grace Hopper in her US Navy uniform); measured p = 0.47
    assert top5[0] == 652 and probs[652] > 0.2, f"top-5 {top5}"
    # a scrambled image must not look like a uniform: the weights, not the test, carry the answer
    with torch.no_grad():
        scrambled = load_efficientnet_lite0()(
            x[..., torch.randperm(224)][..., torch.randperm(224), :]
        ).softmax(-1)[0]
    assert scrambled[652] < probs[652] / 2


@pytest.fixture(scope="module")
def cpu_demo_stage1():
    torch.set_num_threads(2)
    cfg = get_preset("cpu-demo")
    return APTPolicy(cfg), Processor.from_stats(cfg, make_stats())


def test_cpu_demo_stage1_ignores_language_and_trains_only_expert_and_neck(cpu_demo_stage1, tmp_path):
    p, proc = cpu_demo_stage1
    assert p.backbone.num_taps == 6 and len(p.expert.layers) == 3
    raw, noise, a = check_stage1_ignores_language_and_backprops(p, proc)
    assert p.backbone.neck.proj[1].weight.grad is not None
    # frozen shipped weights are not copied into the checkpoint; loading rebuilds them
    p.eval()
    ck = save_checkpoint(tmp_path / "ck", p, proc, {})
    assert (ck / "model.safetensors").stat().st_size < 20e6
    p2, proc2, meta = load_checkpoint(ck)
    assert meta["backbone_weights_in_checkpoint"] is False
    assert torch.equal(a, p2.sample_actions(proc2.process_batch(raw), noise=noise, num_steps=2))


def test_cpu_demo_stage2_sees_language_through_minilm(cpu_demo_stage1):
    cfg = get_preset("cpu-demo", stage=2)
    p = APTPolicy(cfg).eval()
    proc = Processor.from_stats(cfg, make_stats())
    raw = make_raw_batch(1, img=128, tasks=["pick up the red cube"])
    noise = torch.randn(1, 16, 7, generator=torch.Generator().manual_seed(0))
    a = p.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2)
    b = p.sample_actions(proc.process_batch(dict(raw, task=["open the drawer"])), noise=noise, num_steps=2)
    assert (a - b).abs().max() > 1e-5
    # the per-instruction text cache returns the same features as a fresh encoder pass
    p.backbone._text_cache.clear()
    assert torch.equal(a, p.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2))


def test_qwen_vocabulary_matches_qwen3vl_token_ids():
    from transformers import Qwen3VLConfig

    tok = QwenTokenizer()
    ids = tok.encode_one("pick up the red cube")
    assert tok.tok.decode(ids) == "pick up the red cube" and max(ids) < 151643
    assert tok.tok.encode("<|im_start|>") == [151644]
    c = Qwen3VLConfig()
    # multimodal specials sit above the text vocabulary, below the embedding size
    assert 151643 < c.vision_start_token_id < c.image_token_id < 151936


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_tiny_qwen3vl_forward_backward_through_the_policy(mode, tmp_path):
    torch.set_num_threads(2)
    cfg = get_preset("tiny-qwen3vl", stage=2, backbone={"mode": mode, "lora_rank": 4})
    p = APTPolicy(cfg)
    proc = Processor.from_stats(cfg, make_stats())
    raw = make_raw_batch(2, img=32)
    loss, info = p.compute_loss(proc.process_batch(raw, train=True))
    loss.backward()
    grads = {n: float(x.grad.abs().sum()) for n, x in p.backbone.named_parameters() if x.grad is not None}
    if mode == "full":
        assert any(n.startswith("vlm.visual.") and g > 0 for n, g in grads.items()), (
            "no gradient reached the vision tower"
        )
        assert any(n.startswith("vlm.language_model.") and g > 0 for n, g in grads.items())
    else:
        assert grads and all("lora_" in n for n in grads)
    p.eval()
    noise = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(0))
    a = p.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2)
    assert a.shape == (2, 16, 7) and torch.isfinite(a).all()
    b = p.sample_actions(
        proc.process_batch(dict(raw, task=["open the drawer", "y"])), noise=noise, num_steps=2
    )
    assert (a - b).abs().max() > 1e-5
    p2, proc2, _ = load_checkpoint(save_checkpoint(tmp_path / "ck", p, proc, {}))
    assert torch.equal(a, p2.sample_actions(proc2.process_batch(raw), noise=noise, num_steps=2))


def test_tiny_qwen3vl_stage1_ignores_the_instruction():
    cfg = get_preset("tiny-qwen3vl")
    p = APTPolicy(cfg).eval()
    proc = Processor.from_stats(cfg, make_stats())
    raw = make_raw_batch(2, img=32, tasks=["pick up the red cube", "stack"])
    noise = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(0))
    a = p.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2)
    b = p.sample_actions(
        proc.process_batch(dict(raw, task=["put the green block in the blue bowl", "z"])),
        noise=noise,
        num_steps=2,
    )
    assert torch.allclose(a, b, atol=1e-6)


def test_qwen3vl_from_pretrained_loading_code(tmp_path):
    """The real loading path (kind 'qwen3vl', from_pretrained on a local folder) on a tiny saved model."""
    from transformers import Qwen3VLForConditionalGeneration

    from apt_core.model.backbone_qwen3vl import tiny_qwen3vl_config

    torch.set_num_threads(2)
    tiny = get_preset("tiny-qwen3vl")
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(tiny.backbone, 32)).save_pretrained(tmp_path / "vlm")
    cfg = get_preset(
        "qwen3vl-2b",
        stage=2,
        image_size=32,
        chunk_length=16,
        backbone={"model_path": str(tmp_path / "vlm"), "dtype": "float32", "tap_every": 2},
        expert={"width": 64, "n_heads": 4},
    )
    p = APTPolicy(cfg).eval()
    assert p.backbone.pretrained and p.backbone.tap_layers == [2, 4] and len(p.expert.layers) == 2
    proc = Processor.from_stats(cfg, make_stats())
    raw = make_raw_batch(1, img=32)
    noise = torch.randn(1, 16, 7, generator=torch.Generator().manual_seed(0))
    a = p.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2)
    # frozen hub weights stay out of the checkpoint and come back from model_path
    ck = save_checkpoint(tmp_path / "ck", p, proc, {})
    p2, proc2, meta = load_checkpoint(ck)
    assert meta["backbone_weights_in_checkpoint"] is False
    assert torch.equal(a, p2.sample_actions(proc2.process_batch(raw), noise=noise, num_steps=2))


def test_folded_efficientnet_is_the_same_function_and_follows_weight_changes(cpu_demo_stage1):
    from apt_core.model.efficientnet import fold_batchnorm, load_efficientnet_lite0

    net = load_efficientnet_lite0()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(net.features(x), fold_batchnorm(net).features(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    bb = cpu_demo_stage1[0].backbone
    folded = bb._folded_vision()
    assert bb._folded_vision() is folded  # cached while the weights stay
    with torch.no_grad():
        bb.vision._bn0.running_mean.add_(0.5)
    try:
        assert bb._folded_vision() is not folded  # a weight changed: rebuilt
    finally:
        with torch.no_grad():
            bb.vision._bn0.running_mean.sub_(0.5)
