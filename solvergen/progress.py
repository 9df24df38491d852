"""What a long generation shows while it runs, and the time each stage took.

`Progress` is silent and only records stage times (what `--quiet`, tests and the library API
get). `PlainProgress` writes one line per stage and, during the template search, at most one
update line every few seconds: fit for logs and CI. `RichProgress` keeps one live status line
on a terminal (rich). `progress_for` picks between them.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class SearchStatus:
    """Where the template search is, as the progress displays show it."""

    candidates: int  # (basis, action) pairs whose templates were computed
    best: str  # the best template so far, e.g. "21x36", or "none yet"
    work: float  # elimination work spent, in budget units (see template.SearchBudget)
    budget: float


class Progress:
    """Silent; records how long each stage took (`times`, seconds by stage name)."""

    def __init__(self, label: str = ""):
        self.label = label
        self.times: dict[str, float] = {}
        self._started = time.perf_counter()
        self._stage = ""

    @contextmanager
    def stage(self, name: str):
        self._stage = name
        self.stage_started(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def stage_started(self, name: str) -> None:
        pass

    def search(self, status: SearchStatus) -> None:
        """Called after every candidate of the template search."""

    def close(self) -> None:
        pass


def _describe(status: SearchStatus) -> str:
    return (f"{status.candidates} candidate{'s' if status.candidates != 1 else ''}, best {status.best}, "
            f"work {status.work:.0f}/{status.budget:.0f}")


class PlainProgress(Progress):
    """Plain lines (not a terminal): the stage, and during the template search the candidates
    and the best template, at most one line every `interval` seconds; nothing at all for a
    generation shorter than `interval`."""

    def __init__(self, label: str = "", stream=None, interval: float = 5.0):
        super().__init__(label)
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self._last = time.perf_counter()

    def _line(self, text: str) -> None:
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            print(f"{self.label}: {text} [{self.elapsed():.0f} s]", file=self.stream, flush=True)

    def stage_started(self, name: str) -> None:
        self._line(name)

    def search(self, status: SearchStatus) -> None:
        self._line(f"{self._stage}: {_describe(status)}")


class RichProgress(Progress):
    """A live status line on a terminal: spec, stage, candidates, best template, elapsed."""

    def __init__(self, label: str = "", console=None):
        super().__init__(label)
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._status = self.console.status(f"{label}: starting")
        self._status.start()

    def stage_started(self, name: str) -> None:
        self._status.update(f"{self.label}: {name} [{self.elapsed():.1f} s]")

    def search(self, status: SearchStatus) -> None:
        self._status.update(f"{self.label}: {self._stage}: {_describe(status)} [{self.elapsed():.1f} s]")

    def close(self) -> None:
        self._status.stop()


def progress_for(label: str, quiet: bool = False, stream=None) -> Progress:
    """Silent with `quiet`; rich on a terminal; plain lines otherwise."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return Progress(label)
    if stream.isatty():
        return RichProgress(label)
    return PlainProgress(label, stream)
