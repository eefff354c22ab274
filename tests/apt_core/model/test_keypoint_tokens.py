"""Spatial-softmax keypoint tokens of the cpu-demo backbone (`backbone.vision_tokens="keypoints"`):
they locate what they score to below a pixel, keep the stage-1 invariance, train through the memo,
save and load; pooled configs written before the option existed still read as pooled."""

from __future__ import annotations

import pytest
import torch

from apt_core.model.checkpoint import load_checkpoint, save_checkpoint
from apt_core.model.config import ConfigError, PolicyConfig, get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.stages import expand_to_stage2

from .conftest import KP, check_stage1_ignores_language_and_backprops


@pytest.fixture(autouse=True)
def fresh_memos():
    from apt_core.model.backbone_minilm_effnet import _SHARED_MEMOS

    _SHARED_MEMOS.clear()
    yield
    _SHARED_MEMOS.clear()


def test_soft_argmax_finds_a_hot_pixel_between_pixel_centres(kp_stage1):
    """A score map peaked on one pixel puts the keypoint on that pixel's centre; peaked on two
    neighbours, half-way between them (the sub-pixel precision pooled cells do not have)."""
    bb = kp_stage1[0].backbone
    kp = bb.neck.kp[0]  # tap 1: EfficientNet stage 2, 24 channels
    C, h, w = kp.in_channels, 32, 32
    with torch.no_grad():
        saved = kp.weight.clone(), kp.bias.clone()
        kp.weight.zero_()
        kp.bias.zero_()
        kp.weight[0, 0] = 50.0  # keypoint 0 scores channel 0
        m = torch.zeros(2, C, h, w)
        m[0, 0, 5, 20] = 1.0  # row 5, column 20
        m[1, 0, 12, 7] = m[1, 0, 12, 8] = 1.0  # two neighbours in row 12
        xy, value = bb._spatial_softmax(0, m)
        kp.weight.copy_(saved[0])
        kp.bias.copy_(saved[1])
    centre = lambda i, n: -1 + (2 * i + 1) / n  # noqa: E731 (pixel i's centre in [-1, 1])
    torch.testing.assert_close(xy[0, 0], torch.tensor([centre(20, w), centre(5, h)]), atol=1e-4, rtol=0)
    torch.testing.assert_close(xy[1, 0], torch.tensor([centre(7.5, w), centre(12, h)]), atol=1e-4, rtol=0)
    # an unscored keypoint sees a flat softmax: the image centre
    torch.testing.assert_close(xy[:, 1], torch.zeros(2, 2), atol=1e-5, rtol=0)
    assert value.shape == (2, 8, 64)


def test_keypoint_stage1_ignores_language_and_trains_the_keypoint_neck(kp_stage1, tmp_path):
    p, proc = kp_stage1
    assert p.backbone.n_vis == 8  # one camera x 8 keypoints per tap
    raw, noise, a = check_stage1_ignores_language_and_backprops(p, proc)
    for name in ("kp", "val", "proj"):  # stage 1's 3 layers read taps 2, 4, 6 (indices 1, 3, 5)
        assert getattr(p.backbone.neck, name)[1].weight.grad.abs().sum() > 0, name
    p.eval()
    p2, proc2, _ = load_checkpoint(save_checkpoint(tmp_path / "ck", p, proc, {}))
    assert p2.cfg.backbone.vision_tokens == "keypoints"
    assert torch.equal(a, p2.sample_actions(proc2.process_batch(raw), noise=noise, num_steps=2))
    # stage 2 keeps the stage-1 keypoint neck and sees the instruction
    s2 = expand_to_stage2(p, p.cfg.replace(stage=2)).eval()
    torch.testing.assert_close(s2.backbone.neck.kp[0].weight, p.backbone.neck.kp[0].weight)
    c = s2.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2)
    d = s2.sample_actions(
        proc.process_batch(dict(raw, task=["open the drawer", "x"])), noise=noise, num_steps=2
    )
    assert (c - d).abs().max() > 1e-5


def test_keypoint_memo_returns_the_same_tokens_and_trains_the_neck(kp_stage1):
    bb = kp_stage1[0].backbone
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 1, 3, 128, 128, generator=g)
    ids = torch.randint(1000, 5000, (3, 16), generator=g)
    mask = torch.ones(3, 16, dtype=torch.bool)
    with torch.no_grad():
        ref = bb(images, ids, mask)
    bb.enable_feature_cache()
    try:
        bb(images[:1], ids[:1], mask[:1])
        hit = bb(images, ids, mask)  # one memo hit, two misses
        assert len(bb._vision_memo) == 3
        assert bb._vision_memo[next(iter(bb._vision_memo))][0].shape == (24, 32, 32)  # full stage map
        for r, f in zip(ref.features, hit.features, strict=True):
            torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
        bb.neck.kp[0].weight.grad = None
        sum(f.sum() for f in hit.features).backward()
        assert bb.neck.kp[0].weight.grad.abs().sum() > 0
    finally:
        bb._vision_memo = bb._text_memo = None


def test_vision_tokens_config_is_checked_and_old_configs_read_as_pooled():
    with pytest.raises(ConfigError, match="vision_tokens 'patches' not one of"):
        get_preset("cpu-demo", backbone={"vision_tokens": "patches"})
    with pytest.raises(ConfigError, match="keypoints must be >= 1"):
        get_preset("cpu-demo", backbone={"vision_tokens": "keypoints", "keypoints": 0})
    d = get_preset("cpu-demo").to_dict()
    del d["backbone"]["vision_tokens"], d["backbone"]["keypoints"]  # a config.json from before
    assert PolicyConfig.from_dict(d).backbone.vision_tokens == "pooled"


def test_pooled_and_keypoint_backbones_never_share_a_memo(kp_stage1):
    """Both modes hold the same frozen encoders, but their memos hold different things (pooled
    cells vs full maps): a keypoint backbone reading pooled cells would fail or, worse, not."""
    kp = kp_stage1[0].backbone
    pooled = APTPolicy(get_preset("cpu-demo")).backbone  # grid 4, like kp's unused vision_grid
    kp.enable_feature_cache()
    pooled.enable_feature_cache()
    try:
        assert kp._vision_memo is not pooled._vision_memo
        images = torch.rand(1, 1, 3, 128, 128)
        ids, mask = torch.randint(1000, 5000, (1, 16)), torch.ones(1, 16, dtype=torch.bool)
        with torch.no_grad():
            pooled(images, ids, mask)
            kp(images, ids, mask)  # a shared memo would hand it (g*g, C) cells: a shape error
        assert next(iter(kp._vision_memo.values()))[0].dim() == 3
        assert next(iter(pooled._vision_memo.values()))[0].dim() == 2
    finally:
        kp._vision_memo = kp._text_memo = pooled._vision_memo = pooled._text_memo = None


def test_widen_keypoints_keeps_the_old_tokens_and_weights_and_the_new_keypoints_learn(kp_stage1, tmp_path):
    """widen_keypoints 8 -> 12: the 8 keypoints' tokens and every other weight are exactly the
    policy's, the 4 new keypoints are fresh (other score maps, so other tokens) and get gradients, the
    wider policy saves and loads, and narrowing or a pooled backbone is refused by name."""
    from apt_core.model.stages import ExpansionError, widen_keypoints

    from .conftest import make_raw_batch

    p, proc = kp_stage1
    s2 = expand_to_stage2(p, p.cfg.replace(stage=2)).eval()
    wide = widen_keypoints(s2, 12).eval()
    assert wide.cfg.backbone.keypoints == 12 and wide.backbone.n_vis == 12
    a, b = s2.state_dict(), wide.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("backbone.neck.kp."):
            assert torch.equal(b[k][:8], a[k]) and b[k].shape[0] == 12
            assert not torch.equal(b[k][8:], b[k][:4]), k  # fresh, not copies
        elif k == "backbone.neck.pos":
            assert torch.equal(b[k][:8], a[k]) and b[k].shape == (12, a[k].shape[1])
        else:
            assert torch.equal(a[k], b[k]), k
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 1, 3, 128, 128, generator=g)
    ids, mask = torch.randint(1000, 5000, (2, 16), generator=g), torch.ones(2, 16, dtype=torch.bool)
    with torch.no_grad():
        old, new = s2.backbone(images, ids, mask), wide.backbone(images, ids, mask)
    for f, w in zip(old.features, new.features, strict=True):
        assert torch.equal(w[:, :8], f[:, :8])  # the kept keypoints' tokens
        assert torch.equal(w[:, 12:], f[:, 8:])  # the instruction's tokens
        assert (w[:, 8:12] - w[:, :4]).abs().max() > 1e-3
    # the new keypoints train (their score maps' rows get gradients), the frozen encoders stay fixed
    assert [n for n, x in wide.named_parameters() if x.requires_grad] == [
        n for n, x in s2.named_parameters() if x.requires_grad
    ]
    wide.train()
    raw = make_raw_batch(2, img=128)
    loss, _ = wide.compute_loss(proc.process_batch(raw, train=True))
    loss.backward()
    assert wide.backbone.neck.kp[1].weight.grad[8:].abs().sum() > 0
    assert all(x.grad is None for x in wide.backbone.pretrained_parameters())
    wide.eval()
    back, _, _ = load_checkpoint(save_checkpoint(tmp_path / "wide", wide, proc, {}))
    assert back.cfg.backbone.keypoints == 12
    assert all(torch.equal(x, y) for x, y in zip(back.state_dict().values(), b.values(), strict=True))
    with pytest.raises(ExpansionError, match="the policy has 8 per camera and tap, asked for 8"):
        widen_keypoints(s2, 8)
    pooled = APTPolicy(get_preset("cpu-demo"))
    with pytest.raises(ExpansionError, match="vision_tokens 'pooled'"):
        widen_keypoints(pooled, 64)


def _two_camera_pointer_backbone(**readout: bool):
    """A pointer policy's keypoint backbone (two cameras, 4 keypoints) with the given readout flag,
    run on two random samples: (cfg, backbone, (images, ids, mask), its output, its stage maps)."""
    torch.manual_seed(0)
    cfg = get_preset(
        "cpu-demo",
        stage=2,
        camera_names=("front", "wrist"),
        backbone={**KP, "keypoints": 4},
        goal_dim=3,
        goal_input=True,
        goal_pointer=True,
        **readout,
    )
    bb = APTPolicy(cfg).backbone.eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 2, 3, 128, 128, generator=g)
    ids, mask = torch.randint(1000, 5000, (2, 16), generator=g), torch.ones(2, 16, dtype=torch.bool)
    with torch.no_grad():
        return cfg, bb, (images, ids, mask), bb(images, ids, mask), bb._pool(images.flatten(0, 1))


def test_backbone_points_carry_each_keypoints_position_and_camera():
    """BackboneOutput.points: for every keypoint token of camera c, (x, y, 1) in camera c's slot (the
    position its spatial softmax found) and zeros in the other cameras' slots; language tokens zero.
    Only a policy with the pointer's coordinate readout, their one reader, has them built."""
    cfg, bb, (images, ids, mask), out, maps = _two_camera_pointer_backbone(goal_pointer_coords=True)
    assert len(out.points) == len(out.features)
    for j, pts in enumerate(out.points):
        assert pts.shape == (2, 8 + 16, 2, 3)
        xy = bb._spatial_softmax(j, maps[j])[0].reshape(2, 2, 4, 2)  # (B, camera, keypoint, 2)
        for c in range(2):
            mine = pts[:, 4 * c : 4 * (c + 1)]  # camera c's keypoint tokens
            torch.testing.assert_close(mine[:, :, c, :2], xy[:, c])
            assert torch.equal(mine[:, :, c, 2], torch.ones(2, 4))
            assert torch.equal(mine[:, :, 1 - c], torch.zeros(2, 4, 3))
        assert torch.equal(pts[:, 8:], torch.zeros(2, 16, 2, 3))  # the instruction's tokens
        assert (xy[:, 0] - xy[:, 1]).abs().max() > 1e-4  # two images, two sets of positions
    plain = APTPolicy(cfg.replace(goal_pointer_coords=False)).backbone.eval()
    with torch.no_grad():
        assert plain(images, ids, mask).points is None


def test_pointer_coordinate_readout_starts_at_zero_reads_the_attended_positions_and_is_checked():
    """GoalPointer(coords=C): with its last layer at zero it answers what the pointer without it
    does; trained, its answer moves with the keypoints' positions (the features held fixed) and its
    weights get gradients; missing or mismatched points are refused by name; the config needs
    goal_pointer on keypoint tokens."""
    from apt_core.model.pointer import GoalPointer

    torch.manual_seed(0)
    D, B, N = 32, 3, 10
    plain = GoalPointer(D, 1, [0], coords=0)
    torch.manual_seed(0)
    ptr = GoalPointer(D, 1, [0], coords=1)
    feats = [torch.randn(B, N, D)]
    lang = torch.zeros(B, N, dtype=torch.bool)
    lang[:, 6:] = True
    valid = torch.ones(B, N, dtype=torch.bool)
    state = torch.randn(B, 1)
    pts = torch.zeros(B, N, 1, 3)
    pts[:, :6, 0, :2] = torch.rand(B, 6, 2) * 2 - 1
    pts[:, :6, 0, 2] = 1.0
    with torch.no_grad():
        torch.testing.assert_close(ptr(feats, lang, valid, state, [pts]), plain(feats, lang, valid, state))
        torch.nn.init.normal_(ptr.coord[-1].weight)
        moved = pts.clone()
        moved[:, :6, 0, :2] = moved[:, :6, 0, :2].flip(1)  # the same keypoints, other positions
        assert (
            ptr(feats, lang, valid, state, [pts]) - ptr(feats, lang, valid, state, [moved])
        ).abs().max() > 1e-4
    ptr(feats, lang, valid, state, [pts]).sum().backward()
    assert ptr.coord[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="coordinate readout needs the backbone's keypoint points"):
        ptr(feats, lang, valid, state)
    with pytest.raises(ValueError, match="reads 1 cameras' points, the backbone gave 2"):
        ptr(feats, lang, valid, state, [torch.zeros(B, N, 2, 3)])
    with pytest.raises(ConfigError, match="goal_pointer_coords reads the keypoint backbone"):
        get_preset(
            "cpu-demo", stage=2, goal_dim=3, goal_input=True, goal_pointer=True, goal_pointer_coords=True
        )
    with pytest.raises(ConfigError, match="goal_pointer_coords reads the keypoint backbone"):
        get_preset("cpu-demo", stage=2, backbone=KP, goal_pointer_coords=True)


def test_backbone_maps_are_the_tapped_stage_maps_and_only_for_the_pixel_readout():
    """BackboneOutput.maps: per tap the EfficientNet map the keypoints came from, (B * C, C_s, h, w);
    built only for a policy with the pointer's pixel readout."""
    cfg, bb, (images, ids, mask), out, maps = _two_camera_pointer_backbone(goal_pointer_pixels=True)
    assert out.points is None and len(out.maps) == len(out.features) == len(bb.map_channels)
    for j, m in enumerate(out.maps):
        assert m.shape[:2] == (4, bb.map_channels[j])
        torch.testing.assert_close(m, maps[j])
    plain = APTPolicy(cfg.replace(goal_pointer_pixels=False)).backbone.eval()
    with torch.no_grad():
        assert plain(images, ids, mask).maps is None


def test_pointer_pixel_readout_starts_at_zero_points_at_the_matching_pixel_and_is_checked():
    """GoalPointer(pixels=...): with its last layer at zero it answers what the pointer without it
    does; with a query that matches one channel, each head's soft argmax lands on the pixel where
    that channel lights up, in the image itself or in a tapped map resized to the readout's size, and
    moves with it; trained, its weights get gradients; missing or mismatched inputs are refused by
    name; the config needs goal_pointer on keypoint tokens."""
    from apt_core.model.backbone import pixel_centres
    from apt_core.model.pointer import PIXEL_DIM, GoalPointer

    torch.manual_seed(0)
    D, B, N = 32, 2, 10
    plain = GoalPointer(D, 1, [0])
    torch.manual_seed(0)
    ptr = GoalPointer(D, 1, [0], pixels=(1, (3, 5)))  # one camera; taps of 3 and 5 channels
    feats = [torch.randn(B, N, D)]
    lang = torch.zeros(B, N, dtype=torch.bool)
    lang[:, 6:] = True
    valid = torch.ones(B, N, dtype=torch.bool)
    state = torch.randn(B, 1)
    maps = [torch.randn(B, 3, 8, 8) * 0.01, torch.randn(B, 5, 4, 4) * 0.01]
    images = torch.rand(B, 1, 3, 16, 16) * 0.01  # under PIXEL_SIZE: the readout works at 16 x 16
    words = torch.randn(B, D)
    centres = pixel_centres(16, 16, images)
    with torch.no_grad():
        torch.testing.assert_close(
            ptr(feats, lang, valid, state, maps=maps, images=images), plain(feats, lang, valid, state)
        )
        # the query a large constant, so the scores are a large number times the sum of the keys
        ptr.pix_query.weight.zero_()
        ptr.pix_query.bias.fill_(50.0 / PIXEL_DIM**0.5)
        for conv in ptr.pix_key:
            conv.weight.zero_(), conv.bias.zero_()
        for layer in (ptr.pix_image[0], ptr.pix_image[2]):
            layer.weight.zero_(), layer.bias.zero_()
        # the image term alone: the red channel at the pixel itself, into every key dimension
        ptr.pix_image[0].weight[0, 0, 1, 1] = 1.0
        ptr.pix_image[2].weight[:, 0] = 1.0
        red = images.clone()
        red[0, 0, 0, 3, 11] = 1.0  # sample 0: row 3, column 11
        red[1, 0, 0, 12, 2] = 1.0  # sample 1: row 12, column 2
        xy = ptr.pixel_points(words, maps, red)
        assert xy.shape == (B, 1, 4, 2)
        torch.testing.assert_close(xy[0, 0], centres[3 * 16 + 11].expand(4, 2), rtol=0, atol=1e-3)
        torch.testing.assert_close(xy[1, 0], centres[12 * 16 + 2].expand(4, 2), rtol=0, atol=1e-3)
        # a tapped map alone (8 x 8, resized to 16 x 16): its lit pixel's place
        ptr.pix_image[2].weight.zero_()
        ptr.pix_key[0].weight[:, 1] = 1.0
        lit = [m.clone() for m in maps]
        lit[0][0, 1, 2, 5] = 1.0  # sample 0: row 2, column 5 of 8
        lit[0][1, 1, 6, 1] = 1.0  # sample 1: row 6, column 1 of 8
        xy = ptr.pixel_points(words, lit, images)
        coarse = pixel_centres(8, 8, images)
        torch.testing.assert_close(xy[0, 0], coarse[2 * 8 + 5].expand(4, 2), rtol=0, atol=0.02)
        torch.testing.assert_close(xy[1, 0], coarse[6 * 8 + 1].expand(4, 2), rtol=0, atol=0.02)
        torch.nn.init.normal_(ptr.pix_read[-1].weight)
        assert (
            ptr(feats, lang, valid, state, maps=lit, images=images)
            - ptr(feats, lang, valid, state, maps=maps, images=images)
        ).abs().max() > 1e-4
    ptr(feats, lang, valid, state, maps=lit, images=images).sum().backward()
    assert ptr.pix_read[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pixel readout needs the backbone's stage maps and the images"):
        ptr(feats, lang, valid, state, maps=maps)
    with pytest.raises(ValueError, match=r"reads maps of \[3, 5\] channels, got \[3, 4\]"):
        ptr(feats, lang, valid, state, maps=[maps[0], torch.zeros(B, 4, 4, 4)], images=images)
    with pytest.raises(ValueError, match="expects 1 camera maps per sample and one image set per sample"):
        ptr(feats, lang, valid, state, maps=[torch.cat([m, m]) for m in maps], images=images)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 3, S, S\), got \(2, 3, 16, 16\)"):
        ptr(feats, lang, valid, state, maps=maps, images=images[:, 0])
    with pytest.raises(ValueError, match="has no pixel readout"):
        plain.pixel_points(words, maps, images)
    with pytest.raises(ConfigError, match="goal_pointer_pixels reads the keypoint backbone"):
        get_preset(
            "cpu-demo", stage=2, goal_dim=3, goal_input=True, goal_pointer=True, goal_pointer_pixels=True
        )
    with pytest.raises(ConfigError, match="goal_pointer_pixels reads the keypoint backbone"):
        get_preset("cpu-demo", stage=2, backbone=KP, goal_pointer_pixels=True)


@pytest.mark.parametrize(
    ("field", "prefix", "last"),
    [
        ("goal_pointer_coords", "goal_pointer.coord.", "coord"),
        ("goal_pointer_pixels", "goal_pointer.pix_", "pix_read"),
    ],
)
def test_add_pointer_readout_keeps_the_policys_goals_and_adds_a_trainable_readout(
    kp_stage1, tmp_path, field, prefix, last
):
    """add_pointer_coords / add_pointer_pixels: every weight kept, the new ones all the readout's,
    the goals unchanged until it trains, its last layer trains, it survives save and load, and a
    second addition or a policy without keypoint tokens is refused by name."""
    from apt_core.model import stages
    from apt_core.model.stages import ExpansionError

    from .conftest import make_raw_batch

    add = getattr(stages, "add_pointer_" + field.removeprefix("goal_pointer_"))
    p, proc = kp_stage1
    s2 = expand_to_stage2(p, p.cfg.replace(stage=2, goal_dim=3, goal_input=True, goal_pointer=True)).eval()
    out = add(s2).eval()
    assert getattr(out.cfg, field) and not getattr(s2.cfg, field)
    a, b = s2.state_dict(), out.state_dict()
    assert {k for k in b if k not in a} == {k for k in b if k.startswith(prefix)} != set()
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch = proc.process_batch(make_raw_batch(2, img=128))
    with torch.no_grad():
        torch.testing.assert_close(out.predict_goal(batch), s2.predict_goal(batch), rtol=0, atol=1e-6)
    out.train()
    batch = proc.process_batch(make_raw_batch(2, img=128), train=True)
    batch["goal"], batch["goal_valid"] = torch.rand(2, 3), torch.ones(2, dtype=torch.bool)
    loss, _ = out.compute_pointer_loss(batch)
    loss.backward()
    assert getattr(out.goal_pointer, last)[-1].weight.grad.abs().sum() > 0
    back = load_checkpoint(save_checkpoint(tmp_path / "c", out.eval(), proc, {}))[0]
    assert getattr(back.cfg, field)
    with torch.no_grad():
        torch.testing.assert_close(back.predict_goal(batch), out.predict_goal(batch))
    with pytest.raises(ExpansionError, match=f"has {field} already"):
        add(out)
    with pytest.raises(ExpansionError, match=f"{field} reads the keypoint backbone"):
        add(APTPolicy(get_preset("cpu-demo", stage=2, goal_dim=3, goal_input=True, goal_pointer=True)))
