"""Suite-wide: each xdist worker's share of the cores, and the longest test files first.

The README's test command runs two pytest-xdist workers, one test file at a time each
(`--dist loadfile`, set in pyproject.toml). A worker that picks up the minutes-long end-to-end runs last
would leave the other idle at the end, so files whose tests run a whole `leap run` (marked e2e) go
first, then the files that load the real model (marked model), then the rest. Only the order changes:
within a file the tests keep theirs, and every test still runs.
"""

from __future__ import annotations

import os

# Two workers on a 2-core machine each running torch on both cores would fight over them (every
# matrix multiply waits for the other process's threads): a worker uses its share of the cores, and
# so do the services and jobs its tests start, which inherit the setting. Set before any test module
# imports torch; a value the user set wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))


def _weight(item) -> int:
    if item.get_closest_marker("e2e"):
        return 0
    if item.get_closest_marker("model"):
        return 1
    return 2


def pytest_collection_modifyitems(items):
    # file -> (its lightest weight, where it first appears); sorted() is stable, so a file's tests
    # keep their order.
    files: dict[str, tuple[int, int]] = {}
    for index, item in enumerate(items):
        path = str(item.path)
        weight, first = files.get(path, (2, index))
        files[path] = (min(weight, _weight(item)), first)
    items.sort(key=lambda item: files[str(item.path)])
