"""Where the alfworld backend keeps files, and ALFWorld's data files inside the `alfworld` package.

Importing `alfworld` creates the folder named by $ALFWORLD_DATA (default ~/.cache/alfworld), where its
download script would put the official data. Nothing here downloads anything; this module points
ALFWORLD_DATA at our own cache unless the user set it, so that no stray folder appears in $HOME.
It must be imported before `alfworld` (engine.py and export.py do).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_root() -> Path:
    """$LEAP_CACHE_DIR/alfworld, or ~/.cache/leap-serve/alfworld."""
    base = os.environ.get("LEAP_CACHE_DIR") or os.path.join(Path.home(), ".cache", "leap-serve")
    return Path(base) / "alfworld"


os.environ.setdefault("ALFWORLD_DATA", str(cache_root() / "alfworld-data"))


def alfworld_data_file(name: str) -> Path:
    """A file of the `alfworld` package's data folder (alfred.pddl, alfred.twl2), found without importing it."""
    spec = importlib.util.find_spec("alfworld")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the alfworld package is not installed: pip install 'leap-serve[alfworld]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name
