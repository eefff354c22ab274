"""The frozen-encoder memo of the cpu-demo backbone: same features, gradients still reach the neck,
and it steps aside whenever an encoder trains."""

from __future__ import annotations

import pytest
import torch

from apt_core.model.config import get_preset
from apt_core.model.policy import APTPolicy


@pytest.fixture(scope="module")
def cpu_policy():
    torch.manual_seed(0)
    return APTPolicy(get_preset("cpu-demo", stage=2))


@pytest.fixture(autouse=True)
def fresh_memos():
    """Each test starts without memos shared from another test."""
    from apt_core.model.backbone_minilm_effnet import _SHARED_MEMOS

    _SHARED_MEMOS.clear()
    yield
    _SHARED_MEMOS.clear()


def _inputs(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 3, 64, 64, generator=g)
    ids = torch.randint(1000, 5000, (n, 16), generator=g)
    ids[1] = ids[0]  # two rows share an instruction
    return images, ids, torch.ones(n, 16, dtype=torch.bool)


def test_memo_returns_the_same_features_and_trains_the_neck(cpu_policy):
    bb = cpu_policy.backbone
    images, ids, mask = _inputs()
    with torch.no_grad():
        ref = bb(images, ids, mask)
    bb.enable_feature_cache()
    try:
        first = bb(images[:2], ids[:2], mask[:2])  # fills the memo for two images / one instruction
        mixed = bb(images, ids, mask)  # half hits, half misses
        assert len(bb._vision_memo) == 4 and len(bb._text_memo) == 3
        # images are keyed by a 16-byte digest, not by their 49 KB of pixels
        assert {len(k) for k in bb._vision_memo} == {16}
        for a, b, c in zip(ref.features, mixed.features, first.features, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(c, a[:2], rtol=1e-5, atol=1e-5)
        bb.neck.proj[0].weight.grad = None
        sum(f.sum() for f in mixed.features).backward()
        assert bb.neck.proj[0].weight.grad is not None and bb.neck.proj[0].weight.grad.abs().sum() > 0
    finally:
        bb._vision_memo = bb._text_memo = None


def test_memo_is_shared_only_between_equal_encoders(cpu_policy):
    """Stage 1 and stage 2 of one run share the memo; a backbone with other weights does not."""
    from apt_core.model.backbone_minilm_effnet import _SHARED_MEMOS

    _SHARED_MEMOS.clear()
    other = APTPolicy(get_preset("cpu-demo", stage=1)).backbone
    cpu_policy.backbone.enable_feature_cache()
    other.enable_feature_cache()
    assert other._vision_memo is cpu_policy.backbone._vision_memo
    with torch.no_grad():
        next(other.vision.parameters()).add_(1.0)
    try:
        other.enable_feature_cache()
        assert other._vision_memo is not cpu_policy.backbone._vision_memo
    finally:
        with torch.no_grad():
            next(other.vision.parameters()).sub_(1.0)
        _SHARED_MEMOS.clear()
        cpu_policy.backbone._vision_memo = cpu_policy.backbone._text_memo = None


def test_memo_is_bypassed_while_an_encoder_trains(cpu_policy):
    bb = cpu_policy.backbone
    images, ids, mask = _inputs(seed=1)
    bb.enable_feature_cache()
    p = next(bb.vision.parameters())
    try:
        p.requires_grad_(True)
        bb(images, ids, mask)
        assert len(bb._vision_memo) == 0, "a trainable vision encoder must not be memoised"
        p.requires_grad_(False)
        bb(images, ids, mask)
        assert len(bb._vision_memo) == 4
    finally:
        p.requires_grad_(False)
        bb._vision_memo = bb._text_memo = None


def test_memo_stops_growing_at_its_byte_budget_and_still_answers(cpu_policy):
    bb = cpu_policy.backbone
    images, ids, mask = _inputs(seed=2)
    with torch.no_grad():
        ref = bb(images, ids, mask)
        bb.enable_feature_cache()
        bb(images[:1], ids[:1], mask[:1])
        per_image = sum(t.numel() * t.element_size() for t in next(iter(bb._vision_memo.values())))
        _clear_memos(bb)
        bb.enable_feature_cache(max_bytes=int(2.5 * per_image))  # room for two images
        try:
            out = bb(images, ids, mask)
            assert len(bb._vision_memo) == 2
            again = bb(images, ids, mask)  # two from the memo, two encoded again
            assert len(bb._vision_memo) == 2
            for a, b, c in zip(ref.features, out.features, again.features, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
        finally:
            bb._vision_memo = bb._text_memo = None


def _clear_memos(bb) -> None:
    from apt_core.model.backbone_minilm_effnet import _SHARED_MEMOS

    _SHARED_MEMOS.clear()
    bb._vision_memo = bb._text_memo = None
