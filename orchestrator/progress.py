"""Progress display: rich progress bars per phase in a terminal, plain log lines elsewhere."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn


class ProgressReporter:
    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    @contextlib.contextmanager
    def phase(self, title: str, total: int | None) -> Iterator["PhaseProgress"]:
        if not self.enabled:
            yield PhaseProgress(None, None)
            return
        progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        with progress:
            task = progress.add_task(title, total=total, info="")
            start = time.monotonic()
            yield PhaseProgress(progress, task)
            progress.update(task, info=f"{progress.tasks[0].fields.get('info', '')} ({time.monotonic() - start:.0f}s)")


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
