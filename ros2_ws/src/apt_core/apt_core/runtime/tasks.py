"""Instructions, the task queue, "A, then B" chaining and subtask completion.

- `validate_instruction` rejects empty, over-long or non-printable text with a reason.
- `split_chain` splits compositional instructions ("A, then B", "A and then B", "A; B", "first A,
  then B, finally C") into subtasks that run in order.
- `TaskQueue` holds the active task and the tasks queued after it (Instruct MODE_APPEND), advances
  subtasks on completion and reports progress.
- `CompletionDetector` decides when a subtask is done: a ground-truth success signal when one exists
  (the simulator's success topic), else a heuristic: the policy's chunks have stopped moving the arm
  (the chunk's total displacement below a threshold for several chunks in a row) after a minimum
  time. The paper names premature task switching as a failure mode of VLA chaining; a minimum
  subtask duration and a settle count guard against it, and `premature_switches` measures it.
No ROS imports.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections import deque
from dataclasses import dataclass, field

import numpy as np

MAX_INSTRUCTION_CHARS = 512  # Instruct.srv documents 1..512 characters

# Separators between subtasks, longest first so "and then" wins over "then". Case-insensitive.
_CHAIN_SPLIT = re.compile(
    r"\s*(?:,\s*and\s+then\b|,\s*then\b|\band\s+then\b|;\s*then\b|;|\.\s+then\b|,\s*after\s+that\b|"
    r"\bafter\s+that\b|,\s*finally\b|\bfinally\b|\s+then\b)\s*,?\s*",
    re.IGNORECASE,
)
# "first, A, then B" drops "first"; but in "first, then second" the word is a subtask of its own
_LEADING_FIRST = re.compile(r"^\s*first(?:ly)?\s*,?\s+(?!then\b)(?=\S)", re.IGNORECASE)


class InstructionError(ValueError):
    """An instruction was rejected; the message says why."""


def validate_instruction(text: object, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """Return the normalised instruction (whitespace collapsed) or raise InstructionError."""
    if not isinstance(text, str):
        raise InstructionError(f"instruction must be a string, got {type(text).__name__}")
    bad = [c for c in text if not c.isprintable() and c not in " \t\n"]
    if bad:
        names = ", ".join(sorted({f"U+{ord(c):04X}" for c in bad})[:5])
        raise InstructionError(f"instruction contains non-printable characters ({names})")
    norm = unicodedata.normalize("NFC", " ".join(text.split()))
    if not norm:
        raise InstructionError("instruction is empty")
    if len(norm) > max_chars:
        raise InstructionError(f"instruction is {len(norm)} characters long; the limit is {max_chars}")
    if not any(c.isalpha() for c in norm):
        raise InstructionError("instruction contains no words")
    return norm


def split_chain(text: str) -> list[str]:
    """Split a compositional instruction into ordered subtasks; a plain one gives one subtask."""
    body = _LEADING_FIRST.sub("", text.strip())
    parts = [p.strip(" ,.;") for p in _CHAIN_SPLIT.split(body)]
    parts = [p for p in parts if p and any(c.isalpha() for c in p)]
    return parts or [text.strip()]


@dataclass
class Task:
    """One accepted instruction and its subtasks."""

    task_id: str
    instruction: str
    subtasks: list[str]
    index: int = 0  # subtask being executed
    completed: int = 0  # subtasks judged complete
    started_at: float | None = None  # node clock when the first subtask started [s]
    subtask_started_at: float | None = None
    timeout_s: float = 0.0  # 0 = no per-task timeout
    outcome: str = ""  # "", "completed", "canceled", "preempted", "timeout", "fault: ..."

    @property
    def subtask(self) -> str:
        return self.subtasks[min(self.index, len(self.subtasks) - 1)]

    @property
    def done(self) -> bool:
        return bool(self.outcome)


class TaskQueue:
    """Active task + FIFO of queued tasks. Not thread-safe by itself: the node holds one lock."""

    def __init__(self, max_queue: int = 16) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self.active: Task | None = None
        self.queue: deque[Task] = deque()
        self.finished: deque[Task] = deque(maxlen=64)
        self._ids = itertools.count(1)

    def make_task(self, instruction: str, timeout_s: float = 0.0) -> Task:
        text = validate_instruction(instruction)
        return Task(f"task-{next(self._ids)}", text, split_chain(text), timeout_s=timeout_s)

    def submit(self, instruction: str, append: bool, timeout_s: float = 0.0) -> tuple[Task, str]:
        """Replace (append=False) or queue (append=True) an instruction; returns (task, message)."""
        task = self.make_task(instruction, timeout_s)
        subs = " | ".join(task.subtasks)
        if append and self.active is not None:
            if len(self.queue) >= self.max_queue:
                raise InstructionError(f"queue is full ({self.max_queue} tasks waiting)")
            self.queue.append(task)
            return task, f"queued at position {len(self.queue)}: {len(task.subtasks)} subtask(s): {subs}"
        if not append:
            self.cancel_all("preempted")
        self.active = task
        return task, f"started: {len(task.subtasks)} subtask(s): {subs}"

    def cancel_all(self, outcome: str) -> list[Task]:
        """End the active task and drop the queue; returns the tasks that ended."""
        ended = []
        if self.active is not None:
            self.active.outcome = outcome
            ended.append(self.active)
        for t in self.queue:
            t.outcome = outcome
            ended.append(t)
        self.finished.extend(ended)
        self.active, self.queue = None, deque()
        return ended

    def finish_active(self, outcome: str) -> Task | None:
        """End the active task with `outcome` and start the next queued one (if any)."""
        t = self.active
        if t is not None:
            t.outcome = outcome
            self.finished.append(t)
        self.active = self.queue.popleft() if self.queue else None
        return t

    def complete_subtask(self, now: float) -> bool:
        """Mark the active subtask complete; returns True when the whole task completed."""
        t = self.active
        if t is None:
            return False
        t.completed += 1
        if t.index + 1 >= len(t.subtasks):
            self.finish_active("completed")
            return True
        t.index += 1
        t.subtask_started_at = now
        return False

    def find(self, task_id: str) -> Task | None:
        if self.active is not None and self.active.task_id == task_id:
            return self.active
        for t in itertools.chain(self.queue, self.finished):
            if t.task_id == task_id:
                return t
        return None


@dataclass(frozen=True)
class CompletionConfig:
    min_subtask_s: float = 3.0  # never judge a subtask complete sooner [s]: guards premature switching
    settle_motion: float = (
        0.02  # a chunk spanning less than this (max joint travel over the chunk) is "settled" [rad]
    )
    settle_chunks: int = 3  # consecutive settled chunks needed to call the subtask complete
    use_success_signal: bool = True  # trust a ground-truth success topic when one is wired

    def __post_init__(self) -> None:
        if self.min_subtask_s < 0:
            raise ValueError(f"CompletionConfig.min_subtask_s must be >= 0, got {self.min_subtask_s}")
        if not self.settle_motion > 0:
            raise ValueError(f"CompletionConfig.settle_motion must be > 0, got {self.settle_motion}")
        if self.settle_chunks < 1:
            raise ValueError(f"CompletionConfig.settle_chunks must be >= 1, got {self.settle_chunks}")


@dataclass
class CompletionDetector:
    """Per-subtask completion and a progress estimate in [0, 1] (see module docstring)."""

    cfg: CompletionConfig = field(default_factory=CompletionConfig)
    _settled: int = 0
    _start_motion: float | None = None
    _last_motion: float = 0.0
    success: bool = False  # latest ground-truth success signal

    def reset(self) -> None:
        self._settled, self._start_motion, self._last_motion, self.success = 0, None, 0.0, False

    def observe_chunk(self, chunk: np.ndarray, measured: np.ndarray) -> None:
        """Feed a predicted chunk (H, J) and the measured position (J,)."""
        # Motion the chunk itself asks for (its span over time). Not the distance to the measured
        # state: a VLA's chunks carry a per-chunk offset of a few centimetres that never goes away,
        # and would keep a distance-based test from ever calling the subtask complete.
        motion = float(np.max(np.ptp(np.asarray(chunk), axis=0)))
        if self._start_motion is None:
            self._start_motion = max(motion, self.cfg.settle_motion)
        self._last_motion = motion
        self._settled = self._settled + 1 if motion < self.cfg.settle_motion else 0

    def progress(self, elapsed: float) -> float:
        """Heuristic progress: 1 - remaining motion / initial motion, capped below 1 until complete."""
        if self.success:
            return 1.0
        if self._start_motion is None:
            return 0.0
        frac = 1.0 - min(1.0, self._last_motion / self._start_motion)
        return float(np.clip(frac, 0.0, 0.99))

    def complete(self, elapsed: float, success_available: bool) -> bool:
        if elapsed < self.cfg.min_subtask_s:
            return False
        if success_available and self.cfg.use_success_signal:
            return self.success
        return self._settled >= self.cfg.settle_chunks


def premature_switches(switch_times: list[float], true_done_times: list[float | None]) -> dict[str, float]:
    """Measure premature task switching for one chained episode.

    switch_times[i]: when the runtime left subtask i (judged it complete).
    true_done_times[i]: when subtask i was really complete (ground truth), None if never.
    A switch is premature when it happens before the subtask was really done.
    Returns counts and the rate over the switches made.
    """
    n = min(len(switch_times), len(true_done_times))
    premature = 0
    for i in range(n):
        done = true_done_times[i]
        if done is None or switch_times[i] < done:
            premature += 1
    return {"switches": float(n), "premature": float(premature), "rate": premature / n if n else 0.0}
