"""Errors of the demonstration-data pipeline; each message names the bag, topic and time at fault."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Base class: something in the input data or dataset is unusable."""


class BagError(DataError):
    """A bag cannot be converted. The bag is skipped (counted in the summary); others still convert."""

    def __init__(self, bag: Path | str, reason: str, topic: str = "", stamp: float | None = None) -> None:
        self.bag = str(bag)
        self.reason = reason
        self.topic = topic
        self.stamp = stamp
        where = f"bag {self.bag}"
        if topic:
            where += f", topic {topic}"
        if stamp is not None:
            where += f", t={stamp:.6f} s"
        super().__init__(f"{where}: {reason}")


class ConversionError(DataError):
    """The conversion as a whole cannot proceed (no usable bag, output folder in the way, ...)."""


class DatasetFormatError(DataError):
    """A dataset folder does not follow the LeRobot v3 layout; the message names the file and key."""
