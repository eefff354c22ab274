"""Normalisation statistics in the LeRobot layout: per feature mean, std, min, max, count, quantiles.

Vector features get per-dimension lists; images get per-channel (3, 1, 1) lists over pixels scaled
to [0, 1], as LeRobot does, computed on a subsample of frames (images vary slowly in time).
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def vector_stats(x: np.ndarray) -> dict[str, list]:
    """Stats over axis 0 of an (N, D) array (float64 math, so sums of many frames stay exact)."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty array")
    out = {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "count": [int(x.shape[0])],
    }
    # Quantiles sort; a strided subsample of at most ~200k rows keeps image stats fast.
    sub = x[:: max(1, x.shape[0] // 200_000)]
    qs = np.quantile(sub, list(QUANTILES.values()), axis=0)
    for (name, _), q in zip(QUANTILES.items(), qs):
        out[name] = q.tolist()
    return out


def image_stats(images: np.ndarray) -> dict[str, list]:
    """Per-channel stats of (N, H, W, 3) uint8 images in [0, 1], shaped (3, 1, 1) like LeRobot."""
    if images.shape[0] == 0:
        raise ValueError("cannot compute statistics of zero images")
    px = images.reshape(-1, images.shape[-1])
    # A strided subsample of ~250k pixels estimates per-channel stats to about 1e-3.
    px = px[:: max(1, px.shape[0] // 250_000)].astype(np.float64) / 255.0
    flat = vector_stats(px)
    return {
        k: ([[[v]] for v in vals] if k != "count" else [int(images.shape[0])]) for k, vals in flat.items()
    }
