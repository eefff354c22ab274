"""apt_core.model.openloop: the open-loop measures on recorded demonstrations, checked against
policies whose answers are known (a replay of the demonstration, holding still, a policy that
ignores the words)."""

from __future__ import annotations

import numpy as np
import pytest

from apt_core.data.dataset import DemoDataset
from apt_core.model.openloop import demonstrated_chunk, open_loop, sample_frames

H = 8


class _Known:
    """A chunk policy with a known answer: `mode` "replay" returns the demonstrated chunk of the
    frame whose state it is given (padded with its last action), "hold" repeats the state, "words"
    returns a chunk that depends on the instruction only."""

    chunk_length = H

    def __init__(self, ds: DemoDataset, mode: str) -> None:
        self.ds, self.mode = ds, mode

    def reset(self) -> None:
        pass

    def predict(self, obs, instruction: str) -> np.ndarray:
        state = obs.joint_positions
        if self.mode == "hold":
            return np.repeat(state[None], H, 0)
        if self.mode == "words":
            return np.full((H, len(state)), float(len(instruction)))
        i = int(np.flatnonzero(np.all(self.ds.state == state.astype(self.ds.state.dtype), axis=1))[0])
        gt = demonstrated_chunk(self.ds, i, H)
        return np.concatenate([gt, np.repeat(gt[-1:], H - len(gt), 0)])


def test_open_loop_scores_known_policies(tiny_dataset):
    ds = DemoDataset(tiny_dataset, chunk_length=H)
    idx = sample_frames(ds, 20, seed=0)
    assert len(set(idx)) == 20 and idx == sample_frames(ds, 20, seed=0)  # distinct, reproducible
    replay = open_loop(_Known(ds, "replay"), ds, idx)
    hold = open_loop(_Known(ds, "hold"), ds, idx)
    words = open_loop(_Known(ds, "words"), ds, idx)
    assert replay.chunk_error == pytest.approx(0.0, abs=1e-9) and replay.hold_error > 0.001
    assert hold.chunk_error == pytest.approx(hold.hold_error)  # holding still scores what holding still does
    assert hold.instruction_swap == 0.0 and hold.image_swap == 0.0  # it reads neither
    assert words.image_swap == 0.0 and words.instruction_swap > 0.5  # it reads the words only
    assert replay.frames == 20 and 1 <= replay.episodes <= 3
    # a chunk is cut at its episode's end: never the next episode's actions
    last = [i for i in range(len(ds) - 1) if ds.episode_index[i] != ds.episode_index[i + 1]][0]
    assert len(demonstrated_chunk(ds, last, H)) == 1
    with pytest.raises(ValueError, match="frames must be >= 1"):
        sample_frames(ds, 0, seed=0)
