"""Instruction validation, chain splitting, the task queue, completion and premature switching."""

from __future__ import annotations

import numpy as np
import pytest

from apt_core.runtime.tasks import (
    CompletionConfig,
    CompletionDetector,
    InstructionError,
    TaskQueue,
    premature_switches,
    split_chain,
    validate_instruction,
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \t ", "empty"),
        ("x" * 513, "513 characters"),
        ("pick\x00 the cube", "non-printable"),
        ("pick \x1b[31m red", "U\\+001B"),
        ("1234 ...", "no words"),
        (None, "must be a string"),
    ],
)
def test_bad_instructions_rejected_with_reason(text: object, reason: str) -> None:
    with pytest.raises(InstructionError, match=reason):
        validate_instruction(text)


def test_good_instruction_normalised() -> None:
    assert validate_instruction("  put the  red cube\nin the bowl ") == "put the red cube in the bowl"
    assert validate_instruction("pon el cubo rojo en el cuenco") == "pon el cubo rojo en el cuenco"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("put the red cube in the bowl", ["put the red cube in the bowl"]),
        ("pick the red cube, then put it in the bowl", ["pick the red cube", "put it in the bowl"]),
        (
            "first stack green on red, then push blue, finally open",
            ["stack green on red", "push blue", "open"],
        ),
        ("push the cube and then stack it; lift it", ["push the cube", "stack it", "lift it"]),
        ("Stack A on B. Then push C", ["Stack A on B", "push C"]),
        ("strengthen the tower", ["strengthen the tower"]),
        ("first, then second", ["first", "second"]),  # "then" inside a word is not a separator
    ],
)
def test_split_chain(text: str, parts: list[str]) -> None:
    assert split_chain(text) == parts


def test_queue_replace_append_and_advance() -> None:
    q = TaskQueue(max_queue=2)
    a, msg = q.submit("pick the cube, then place it", append=True)
    assert q.active is a and "2 subtask(s)" in msg
    b, msg = q.submit("push the ball", append=True)
    assert "position 1" in msg and list(q.queue) == [b]
    assert not q.complete_subtask(now=1.0)
    assert q.active is a and a.index == 1 and a.subtask == "place it"
    assert q.complete_subtask(now=2.0)
    assert a.outcome == "completed" and a.completed == 2 and q.active is b
    c, _ = q.submit("wave", append=True)
    q.submit("wave again", append=True)
    with pytest.raises(InstructionError, match="queue is full"):
        q.submit("one more", append=True)
    d, _ = q.submit("stop everything and dance", append=False)
    assert b.outcome == "preempted" and c.outcome == "preempted" and q.active is d and not q.queue
    assert q.find(b.task_id) is b and q.find("nope") is None


def test_completion_heuristic_guards_premature_switch() -> None:
    det = CompletionDetector(CompletionConfig(min_subtask_s=2.0, settle_motion=0.02, settle_chunks=3))
    here = np.zeros(3)

    def ramp(span: float, offset: float = 0.0) -> np.ndarray:
        return offset + np.linspace(0, span, 8)[:, None] * np.ones((1, 3))

    det.observe_chunk(ramp(0.5), here)
    assert det.progress(0.5) == 0.0
    for k in range(3):
        # settled chunks with a per-chunk offset (as a VLA produces) still count as settled
        det.observe_chunk(ramp(0.01, offset=0.05 * (-1) ** k), here)
    assert det.progress(1.0) > 0.9
    assert not det.complete(1.0, success_available=False)  # too early: the guard holds
    assert det.complete(2.5, success_available=False)
    det.observe_chunk(ramp(0.3), here)  # moving again resets the settle count
    assert not det.complete(3.0, success_available=False)
    # with a ground-truth signal the heuristic is ignored
    assert not det.complete(3.0, success_available=True)
    det.success = True
    assert det.complete(3.0, success_available=True) and det.progress(3.0) == 1.0


def test_premature_switch_metric() -> None:
    m = premature_switches([2.0, 5.0], [3.0, 4.0])
    assert m == {"switches": 2.0, "premature": 1.0, "rate": 0.5}
    assert premature_switches([1.0], [None])["rate"] == 1.0
    assert premature_switches([], [])["rate"] == 0.0
