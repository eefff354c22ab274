"""GoalPointer: where the instruction's next gripper event is, pointed out on the backbone's tokens.

The goal head (policy.goal_head) reads the expert's state token, which sits behind eight expert
layers trained mostly by the action loss: on new layouts it memorises instead of grounding
(docs/experiments.md items 16-18). In a demonstration every layout comes with one instruction, so
the layout alone predicts the target, and a module that sees the image when it decides where to
look can learn layout -> target. The pointer cannot: its question is built from the words and the
state only, and the image enters only as the keys and values it points at.

    query + Linear(state) ──> attention over the instruction tokens   (which words matter now)
                          ──> attention over the vision tokens         (which of them match)
                          ──> MLP(pointed-at tokens) + Linear(words)   goal (B, 3), GOAL_SCALE units

Tokens are those of the backbone's odd taps. The state tells it the phase (before or after the
grasp: the object's words or the target's); its map starts at zero. The second term lets the words
move the goal away from what is pointed at (where a push ends); it starts at zero too. With
cfg.goal_pointer the sampled actions are conditioned on its answer instead of the goal head's,
which also saves the head's extra expert pass.

Coordinate readout (cfg.goal_pointer_coords, keypoint backbones): the MLP above regresses a position
from the attended tokens' features, and a feature says where its keypoint is only through a learned
projection of (x, y). The readout takes the pointing attention's weights (mean over heads) and
averages the keypoints' own sub-pixel image positions with them, per camera, and maps those
positions and each camera's share of the attention to a correction of the goal; the camera is
fixed, so that map is a smooth one from the image to the table. Its last layer starts at zero.

Pixel readout (cfg.goal_pointer_pixels, keypoint backbones): the pointer also points at pixels, not
only at the keypoints the neck chose. Its keys are a PIXEL_SIZE x PIXEL_SIZE map per camera: the
image itself, average-pooled to that size, through a small conv (its colours and edges at 2 px in a
128 px image), plus every tapped EfficientNet map projected (1x1 conv) to PIXEL_DIM channels and
resized to that size (what the objects are, at several depths). PIXEL_HEADS queries, projected
from the words the pointer read (which also carry the phase), score every pixel of each camera; a
softmax over the pixels gives each head's expected (x, y), finer than a pixel. An MLP maps those
positions and the goal above to a correction of the goal (last layer at zero). The keys carry no
position, so what is pointed at is chosen by appearance alone and its place comes from the soft
argmax. In the 128 px front image 1 cm on the table is about 1.7 px.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import pixel_centres

PIXEL_DIM = 64  # width of the space in which the pixel readout's queries score pixels
PIXEL_HEADS = 4  # pixel queries per camera
PIXEL_SIZE = 64  # the pixel readout's map side (at most; smaller images keep their size)


class GoalPointer(nn.Module):
    def __init__(
        self,
        dim: int,
        state_dim: int,
        taps: list[int],
        goal_dim: int = 3,
        heads: int = 4,
        coords: int = 0,
        pixels: tuple[int, int] | None = None,
    ) -> None:
        """coords: the cameras of a keypoint backbone, for the coordinate readout (0: none).
        pixels: (cameras, map channels of every backbone tap) for the pixel readout (None: none)."""
        super().__init__()
        if not taps:
            raise ValueError("GoalPointer needs at least one backbone tap to read")
        self.taps = list(taps)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.state_in = nn.Linear(state_dim, dim)
        self.read = nn.MultiheadAttention(dim, heads, batch_first=True)  # query -> words
        self.point = nn.MultiheadAttention(dim, heads, batch_first=True)  # words -> vision tokens
        self.head = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, goal_dim))
        self.offset = nn.Linear(dim, goal_dim)
        for layer in (self.state_in, self.offset):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.coords = coords
        if coords:  # per camera: attended (x, y) and the camera's attention share -> goal correction
            self.coord = nn.Sequential(nn.Linear(3 * coords, 128), nn.GELU(), nn.Linear(128, goal_dim))
            nn.init.zeros_(self.coord[-1].weight)
            nn.init.zeros_(self.coord[-1].bias)
        self.pixels = pixels
        if pixels is not None:
            cams, channels = pixels
            self.pix_key = nn.ModuleList(nn.Conv2d(c, PIXEL_DIM, 1) for c in channels)
            self.pix_image = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, PIXEL_DIM, 1)
            )
            self.pix_query = nn.Linear(dim, PIXEL_HEADS * PIXEL_DIM)
            self.pix_read = nn.Sequential(
                nn.Linear(cams * PIXEL_HEADS * 2 + goal_dim, 128), nn.GELU(), nn.Linear(128, goal_dim)
            )
            nn.init.zeros_(self.pix_read[-1].weight)
            nn.init.zeros_(self.pix_read[-1].bias)

    def forward(
        self,
        features: list[torch.Tensor],
        lang: torch.Tensor,
        valid: torch.Tensor,
        state: torch.Tensor,
        points: list[torch.Tensor] | None = None,
        maps: list[torch.Tensor] | None = None,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features: the backbone's taps, each (B, N, D); lang: (B, N) language tokens; valid: (B, N)
        real tokens; state: (B, S) normalised; points: the backbone's keypoint positions per tap
        (BackboneOutput.points), needed by the coordinate readout; maps: the backbone's stage maps
        per tap (BackboneOutput.maps) and images: the processed images (B, C, 3, S, S), both needed
        by the pixel readout. Returns (B, goal_dim)."""
        if max(self.taps) >= len(features):
            raise ValueError(f"GoalPointer reads taps {self.taps}, the backbone gave {len(features)}")
        n = len(self.taps)
        tokens = torch.cat([features[j] for j in self.taps], 1)  # (B, n * N, D)
        lang, valid = torch.cat([lang] * n, 1), torch.cat([valid] * n, 1)
        if not bool((valid & lang).any(1).all()) or not bool((valid & ~lang).any(1).all()):
            raise ValueError("GoalPointer needs instruction tokens and vision tokens in every sample")
        q = self.query.expand(tokens.shape[0], -1, -1) + self.state_in(state)[:, None]
        words, _ = self.read(q, tokens, tokens, key_padding_mask=~(valid & lang), need_weights=False)
        words = words + q
        seen, att = self.point(
            words, tokens, tokens, key_padding_mask=~(valid & ~lang), need_weights=bool(self.coords)
        )
        out = (self.head(seen) + self.offset(words))[:, 0]
        if self.pixels is not None:
            out = out + self.pix_read(
                torch.cat([self.pixel_points(words[:, 0], maps, images).flatten(1), out], 1)
            )
        if not self.coords:
            return out
        if points is None:
            raise ValueError("GoalPointer's coordinate readout needs the backbone's keypoint points")
        pts = torch.cat([points[j] for j in self.taps], 1)  # (B, n * N, C, 3)
        if pts.shape[2] != self.coords:
            raise ValueError(
                f"GoalPointer reads {self.coords} cameras' points, the backbone gave {pts.shape[2]}"
            )
        s = torch.einsum("bn,bncd->bcd", att[:, 0], pts)  # (B, C, 3): sum of w * (x, y, 1) per camera
        share = s[..., 2:]
        xy = s[..., :2] / share.clamp_min(1e-6)  # attention-weighted mean position per camera
        return out + self.coord(torch.cat([xy, share], -1).flatten(1))

    def pixel_points(
        self, words: torch.Tensor, maps: list[torch.Tensor] | None, images: torch.Tensor | None
    ) -> torch.Tensor:
        """The pixel readout's pointing: words (B, D), maps per backbone tap (B * C, C_s, h, w),
        images (B, C, 3, S, S) -> each camera's and head's expected pixel position
        (B, C, PIXEL_HEADS, 2), (x, y) in [-1, 1]."""
        if self.pixels is None:
            raise ValueError("GoalPointer has no pixel readout (build it with pixels)")
        cams, channels = self.pixels
        if maps is None or images is None:
            raise ValueError("GoalPointer's pixel readout needs the backbone's stage maps and the images")
        if len(maps) != len(channels) or any(m.shape[1] != c for m, c in zip(maps, channels, strict=False)):
            got = [m.shape[1] for m in maps]
            raise ValueError(
                f"GoalPointer's pixel readout reads maps of {list(channels)} channels, got {got}"
            )
        if images.dim() != 5 or images.shape[1:3] != (cams, 3):
            raise ValueError(
                f"GoalPointer's pixel readout expects images (B, {cams}, 3, S, S), got {tuple(images.shape)}"
            )
        n = maps[0].shape[0]
        if n != words.shape[0] * cams or images.shape[0] != words.shape[0]:
            raise ValueError(
                f"GoalPointer's pixel readout expects {cams} camera maps per sample and one image set "
                f"per sample, got {n} maps and {images.shape[0]} image sets for {words.shape[0]} samples"
            )
        h, w = min(images.shape[-2], PIXEL_SIZE), min(images.shape[-1], PIXEL_SIZE)
        q = self.pix_query(words).view(-1, 1, PIXEL_HEADS, PIXEL_DIM).expand(-1, cams, -1, -1)
        q = q.reshape(n, PIXEL_HEADS, PIXEL_DIM) / PIXEL_DIM**0.5

        def score(conv: nn.Conv2d, m: torch.Tensor) -> torch.Tensor:
            """q . conv(m) at m's size, (n, H, h', w'), with the 1x1 conv folded into the query:
            q . (W m + b) = (q W) . m + q . b, so no PIXEL_DIM-channel key map is built."""
            wq = q @ conv.weight[:, :, 0, 0]  # (n, H, C_in)
            return torch.einsum("nhc,ncyx->nhyx", wq, m) + (q @ conv.bias)[..., None, None]

        # a score is linear in its key, and so is the bilinear resize: each tap is scored at its own
        # size and the scores (PIXEL_HEADS channels) are resized
        hidden = self.pix_image[1](self.pix_image[0](F.adaptive_avg_pool2d(images.flatten(0, 1), (h, w))))
        scores = score(self.pix_image[2], hidden)
        for conv, m in zip(self.pix_key, maps, strict=True):
            scores = scores + F.interpolate(score(conv, m), size=(h, w), mode="bilinear", align_corners=False)
        att = scores.flatten(2).softmax(-1)  # (B*C, H, h*w)
        return (att @ pixel_centres(h, w, scores)).view(-1, cams, PIXEL_HEADS, 2)
