"""Progress display: rich progress bars per phase in a terminal, plain log lines elsewhere.

In a terminal each phase gets a live bar (done/total, the phase's own info such as success so far or
the training loss, elapsed time and ETA). When stderr is not a terminal (CI logs, `kubectl logs`, a
file), a live bar would print nothing until the phase ends, so each phase prints a start line, a
progress line at most every `log_every_s` seconds, and an end line with its duration.

Phases may overlap (an evaluation beside the next iteration's rollouts): in a terminal their bars
share one live display, each its own row.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn


class ProgressReporter:
    def __init__(self, console: Console | None = None, enabled: bool = True, log_every_s: float = 30.0):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.log_every_s = log_every_s
        self._lock = threading.Lock()
        #: The live display the running phases' bars share, and how many phases use it.
        self._live: Progress | None = None
        self._live_phases = 0

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    @contextlib.contextmanager
    def phase(self, title: str, total: int | None) -> Iterator["PhaseProgress"]:
        if not self.enabled:
            yield PhaseProgress(None, None)
            return
        if not self.console.is_terminal:
            lines = LineProgress(self.console, title, total, self.log_every_s)
            yield lines
            lines.finish()
            return
        with self._lock:
            if self._live is None:
                self._live = Progress(
                    SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=self.console, transient=False,
                )
                self._live.start()
            self._live_phases += 1
            progress = self._live
            task = progress.add_task(title, total=total, info="")
        start = time.monotonic()
        try:
            yield PhaseProgress(progress, task)
            info = next((t.fields.get("info", "") for t in progress.tasks if t.id == task), "")
            progress.update(task, info=f"{info} ({time.monotonic() - start:.0f}s)")
        finally:
            with self._lock:
                self._live_phases -= 1
                if self._live_phases == 0:
                    self._live.stop()
                    self._live = None


class PhaseProgress:
    def __init__(self, progress: Progress | None, task):
        self._progress = progress
        self._task = task

    def advance(self, n: float = 1, info: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **({"info": info} if info is not None else {}))

    def update(self, completed: float | None = None, total: float | None = None, info: str | None = None) -> None:
        if self._progress is not None:
            kwargs = {}
            if completed is not None:
                kwargs["completed"] = completed
            if total is not None:
                kwargs["total"] = total
            if info is not None:
                kwargs["info"] = info
            self._progress.update(self._task, **kwargs)


class LineProgress(PhaseProgress):
    """The same calls as a bar, written as occasional plain lines (for logs that are not terminals)."""

    def __init__(self, console: Console, title: str, total: int | None, every_s: float):
        super().__init__(None, None)
        self.console, self.title, self.total, self.every_s = console, title, total, every_s
        self.completed = 0.0
        self.info = ""
        self.started = self.last = time.monotonic()
        self._print(f"{title}: started" + (f" ({total} to do)" if total else ""))

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _status(self) -> str:
        done = f"{self.completed:.0f}" + (f"/{self.total:.0f}" if self.total else "")
        return f"{self.title}: {done}" + (f"  {self.info}" if self.info else "") + \
            f"  {time.monotonic() - self.started:.0f}s"

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._print(self._status())

    def advance(self, n: float = 1, info: str | None = None) -> None:
        self.completed += n
        if info is not None:
            self.info = info
        self._maybe_print()

    def update(self, completed: float | None = None, total: float | None = None, info: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if info is not None:
            self.info = info
        self._maybe_print()

    def finish(self) -> None:
        self._print(self._status().replace(f"{self.title}: ", f"{self.title}: done, ", 1))
