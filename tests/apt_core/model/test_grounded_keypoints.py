"""Grounded keypoints of the cpu-demo backbone (`backbone.grounded_keypoints`, stage 2 only): score
maps queried by the instruction. They can learn to land on the object the words name, they read
only the instruction's real tokens, stage 1 never has them, expansion starts them fresh, and they
save and load."""

from __future__ import annotations

import pytest
import torch

from apt_core.model.checkpoint import load_checkpoint, save_checkpoint
from apt_core.model.config import ConfigError, get_preset
from apt_core.model.policy import APTPolicy
from apt_core.model.stages import expand_to_stage2

from .conftest import KP, make_raw_batch


@pytest.fixture(scope="module")
def stage2(kp_stage1):
    p1, proc = kp_stage1
    return expand_to_stage2(p1, p1.cfg.replace(stage=2, backbone={"grounded_keypoints": 3})), proc


def _squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n grey 128 px images, each with a red and a blue 20 px square at random places that do not
    overlap; returns (uint8 images (n, 3, 128, 128), red centres, blue centres), centres as (x, y)
    in the soft argmax's [-1, 1] coordinates."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.full((n, 3, 128, 128), 128, dtype=torch.uint8)
    centres = torch.zeros(2, n, 2)
    for i in range(n):
        while True:
            xy = torch.randint(8, 100, (2, 2), generator=g)  # top-left corners (x, y)
            if (xy[0] - xy[1]).abs().max() > 24:
                break
        for c, (x, y) in enumerate(xy.tolist()):
            rgb = torch.tensor([220, 30, 30] if c == 0 else [30, 30, 220], dtype=torch.uint8)
            imgs[i, :, y : y + 20, x : x + 20] = rgb[:, None, None]
            centres[c, i] = torch.tensor([(x + 10) / 64 - 1, (y + 10) / 64 - 1])
    return imgs, centres[0], centres[1]


def test_a_grounded_keypoint_learns_to_find_the_named_object(stage2):
    """Trained on where the named square is, one grounded keypoint finds it in new images: the
    same weights go to the red square when asked for red and to the blue one when asked for blue.
    A plain keypoint cannot do this: it does not read the instruction."""
    p, proc = stage2
    bb = p.backbone
    j = 0  # tap 1: EfficientNet stage 2 (stride 4, 32 x 32), where colour is still explicit

    def inputs(imgs: torch.Tensor, colour: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = make_raw_batch(len(imgs), img=128, tasks=[f"pick up the {colour} block"] * len(imgs))
        batch = proc.process_batch(dict(raw, **{"observation.images.front": imgs}))
        with torch.no_grad():
            maps = bb._pool(batch["images"].flatten(0, 1))[j]
            text = bb._text_states(batch["lang_ids"], batch["lang_mask"], grad=False)[bb.tap_layers[j]]
        return maps, text, batch["lang_mask"]

    def located(maps, text, mask) -> torch.Tensor:  # grounded keypoint 0 of tap j, (n, 2)
        xy, _ = bb._spatial_softmax(j, maps, bb.grounded_scores(j, maps, text, mask))
        return xy[:, 0]

    imgs, red, blue = _squares(24, seed=0)
    train = [(*inputs(imgs, "red"), red), (*inputs(imgs, "blue"), blue)]
    params = [bb.neck.ground_words[j], *bb.neck.ground_q[j].parameters(), *bb.neck.ground_k[j].parameters()]
    saved = [t.detach().clone() for t in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    try:
        for _ in range(150):
            loss = sum((located(m, t, k) - target).abs().mean() for m, t, k, target in train)
            opt.zero_grad()
            loss.backward()
            opt.step()
        test_imgs, red, blue = _squares(12, seed=1)
        with torch.no_grad():
            at_red = located(*inputs(test_imgs, "red"))
            at_blue = located(*inputs(test_imgs, "blue"))
    finally:
        with torch.no_grad():
            for t, s in zip(params, saved, strict=True):
                t.copy_(s)
    err = lambda a, b: (a - b).norm(dim=-1).median()  # noqa: E731
    # 0.15 is 10 px, half a square; the other square is at least 24 px (0.375) away
    assert err(at_red, red) < 0.15 and err(at_blue, blue) < 0.15, (err(at_red, red), err(at_blue, blue))
    assert err(at_red, blue) > 0.3 and err(at_blue, red) > 0.3


def test_grounded_tokens_read_the_instruction_but_not_its_padding(stage2):
    p, proc = stage2
    bb = p.backbone
    raw = make_raw_batch(2, img=128, tasks=["pick up the red cube", "stack the blocks"])
    batch = proc.process_batch(raw)
    n_vis, n_g = bb.n_vis, bb.n_ground
    assert n_g == 3
    with torch.no_grad():
        out = bb(batch["images"], batch["lang_ids"], batch["lang_mask"])
        other = proc.process_batch(dict(raw, task=["open the drawer", "stack the blocks"]))
        out2 = bb(other["images"], other["lang_ids"], other["lang_mask"])
        ids = batch["lang_ids"].clone()
        ids[~batch["lang_mask"].bool()] = 7  # change only padded positions
        out3 = bb(batch["images"], ids, batch["lang_mask"])
    # [vision ; grounded ; instruction]: grounded tokens are marked as language (hidden in stage 1)
    assert not out.lang_mask[0, :n_vis].any() and out.lang_mask[0, n_vis:].all()
    assert out.valid_mask[:, : n_vis + n_g].all()
    for f, f2, f3 in zip(out.features, out2.features, out3.features, strict=True):
        assert f.shape[1] == n_vis + n_g + batch["lang_ids"].shape[1]
        assert torch.equal(f[:, :n_vis], f2[:, :n_vis])  # vision tokens never see the instruction
        assert (f[0, n_vis : n_vis + n_g] - f2[0, n_vis : n_vis + n_g]).abs().max() > 1e-4
        assert torch.equal(f[1, n_vis : n_vis + n_g], f2[1, n_vis : n_vis + n_g])  # same instruction
        torch.testing.assert_close(f[:, n_vis : n_vis + n_g], f3[:, n_vis : n_vis + n_g])


def test_stage1_has_none_and_expansion_starts_them_fresh(kp_stage1, stage2, tmp_path):
    p1, proc = kp_stage1
    p2, _ = stage2
    assert p1.backbone.n_ground == 0 and not any("ground" in n for n, _ in p1.backbone.named_parameters())
    # a stage-1 config asking for them builds none either: they read the instruction
    p1g = APTPolicy(p1.cfg.replace(backbone={"grounded_keypoints": 3}))
    assert p1g.backbone.n_ground == 0
    # the stage-1 neck carries over; the grounded neck is new and trains
    torch.testing.assert_close(p2.backbone.neck.kp[0].weight, p1.backbone.neck.kp[0].weight)
    p2.train()
    p2.zero_grad(set_to_none=True)
    loss, _ = p2.compute_loss(proc.process_batch(make_raw_batch(2, img=128), train=True))
    loss.backward()
    for name in ("ground_words", "ground_q", "ground_k", "ground_proj"):
        mod = getattr(p2.backbone.neck, name)[3]
        grad = mod.grad if isinstance(mod, torch.nn.Parameter) else mod.weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(x.grad is None for x in p2.backbone.pretrained_parameters())
    p2.zero_grad(set_to_none=True)
    p2.eval()
    # save and load: the config carries the count, the weights come back exactly
    raw = make_raw_batch(2, img=128, tasks=["pick up the red cube", "stack the blocks"])
    noise = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(0))
    a = p2.sample_actions(proc.process_batch(raw), noise=noise, num_steps=2)
    q, proc_q, _ = load_checkpoint(save_checkpoint(tmp_path / "ck", p2, proc, {}))
    assert q.cfg.backbone.grounded_keypoints == 3
    assert torch.equal(a, q.sample_actions(proc_q.process_batch(raw), noise=noise, num_steps=2))


def test_grounded_keypoints_config_is_checked():
    with pytest.raises(ConfigError, match="grounded_keypoints must be >= 0"):
        get_preset("cpu-demo", backbone={**KP, "grounded_keypoints": -1})
    with pytest.raises(ConfigError, match="needs kind 'minilm_effnet' with vision_tokens 'keypoints'"):
        get_preset("cpu-demo", backbone={"grounded_keypoints": 2})  # pooled cells
    with pytest.raises(ConfigError, match="needs kind 'minilm_effnet'"):
        get_preset("debug", backbone={"grounded_keypoints": 2})
