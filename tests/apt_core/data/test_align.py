"""Alignment rules on hand-made timestamp patterns (pure numpy, no bags)."""

from __future__ import annotations

import numpy as np
import pytest

from apt_core.data import align as al
from apt_core.data.bag_reader import Trajectory

MS = 1_000_000  # ns per ms
DT = 100 * MS  # 10 Hz


def test_make_ticks_inclusive_and_empty() -> None:
    assert al.make_ticks(0, 300 * MS, DT).tolist() == [0, DT, 2 * DT, 3 * DT]
    assert al.make_ticks(0, 299 * MS, DT).tolist() == [0, DT, 2 * DT]
    assert al.make_ticks(5, 4, DT).size == 0


def test_asof_takes_latest_not_after_tick_and_drops_stale() -> None:
    ticks = np.arange(6) * DT
    # messages at 0, 95 ms, 100 ms (exactly on tick 1), then nothing until 480 ms
    stamps = np.array([0, 95, 100, 480]) * MS
    idx = al.align(ticks, stamps, "asof", DT)  # max_age = 2 dt = 200 ms
    # tick 0 -> msg 0; tick 1 (100) -> msg 2 (exact stamp counts as-of); tick 2 (200) -> msg 2 (age 100);
    # tick 3 (300) -> msg 2 age 200 (still ok); tick 4 (400) -> age 300 -> dropped; tick 5 (500) -> msg 3
    assert idx.tolist() == [0, 2, 2, 2, -1, 3]
    tight = al.align(ticks, stamps, "asof", DT, max_age_ns=50 * MS)
    assert tight.tolist() == [0, 2, -1, -1, -1, 3]


def test_hold_never_drops_after_first_message() -> None:
    ticks = np.arange(6) * DT
    stamps = np.array([150, 480]) * MS
    assert al.align(ticks, stamps, "hold", DT).tolist() == [-1, -1, 0, 0, 0, 1]


def test_drop_uses_nearest_within_half_period() -> None:
    ticks = np.arange(5) * DT
    # 30 ms late, 40 ms early (for tick 2 at 200: msg 160), nothing near 300, 50 ms late exactly (tie edge)
    stamps = np.array([30, 160, 450]) * MS
    idx = al.align(ticks, stamps, "drop", DT)
    # tick0: 30 (|30|) ok -> 0; tick1 (100): nearest 160 (60) or 30 (70) -> 160 is 60 > 50 -> drop
    # tick2 (200): 160 (40) -> 1; tick3 (300): 160 (140) / 450 (150) -> drop; tick4 (400): 450 (50 = dt/2) -> 2
    assert idx.tolist() == [0, -1, 1, -1, 2]


def test_drop_tie_goes_to_earlier_message() -> None:
    idx = al.align(np.array([100 * MS]), np.array([60, 140]) * MS, "drop", DT)
    assert idx.tolist() == [0]


def test_empty_stream_and_bad_rule() -> None:
    assert al.align(np.arange(3) * DT, np.zeros(0, np.int64), "asof", DT).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="alignment rule 'nearest'"):
        al.align(np.arange(3), np.arange(3), "nearest", DT)


def test_interpolate_trajectory_linear_and_clamped() -> None:
    pos = np.array([[0.0, 10.0], [1.0, 20.0], [3.0, 0.0]])
    tfs = np.array([100, 200, 400]) * MS
    start = 1000 * MS
    assert al.interpolate_trajectory(start + 50 * MS, start, tfs, pos).tolist() == [0.0, 10.0]  # before first
    np.testing.assert_allclose(al.interpolate_trajectory(start + 150 * MS, start, tfs, pos), [0.5, 15.0])
    np.testing.assert_allclose(al.interpolate_trajectory(start + 300 * MS, start, tfs, pos), [2.0, 10.0])
    assert al.interpolate_trajectory(start + 900 * MS, start, tfs, pos).tolist() == [3.0, 0.0]  # after last


def test_command_targets_latest_trajectory_as_of_tick_at_t_plus_dt() -> None:
    # two commands: at 0 (one point 0.1 s ahead = 1.0) and at 250 ms (two points: 2.0 at +0.1, 4.0 at +0.3)
    t1 = Trajectory(t=0, start=0, tfs=np.array([DT]), pos=np.array([[1.0]]))
    t2 = Trajectory(t=250 * MS, start=250 * MS, tfs=np.array([DT, 3 * DT]), pos=np.array([[2.0], [4.0]]))
    ticks = np.arange(6) * DT
    targets, ok = al.command_targets(ticks, DT, np.array([0, 250 * MS]), [t1, t2])
    assert ok.all()
    # ticks 0..2 use t1 (held after its last point); tick 3 (300) evaluates t2 at 400 -> between 350 (2) and 550 (4)
    np.testing.assert_allclose(targets[:, 0], [1.0, 1.0, 1.0, 2.5, 3.5, 4.0])
    _, ok2 = al.command_targets(ticks, DT, np.array([150 * MS]), [t1])
    assert ok2.tolist() == [False, False, True, True, True, True]


def test_instruction_per_tick_segments_and_leading_frames() -> None:
    ticks = np.arange(5) * DT
    instr = [(50 * MS, "pick"), (120 * MS, ""), (300 * MS, "place")]
    assert al.instruction_per_tick(ticks, instr) == ["pick", "pick", "pick", "place", "place"]
    assert al.instruction_per_tick(ticks, []) == [""] * 5
