"""Trajectory files: JSON of a common.proto Trajectory (google.protobuf.json_format), a JSON list of
them, or JSONL (one Trajectory per line)."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from leap.v1 import common_pb2


def parse_trajectory(obj: dict, where: str = "") -> common_pb2.Trajectory:
    try:
        return json_format.ParseDict(obj, common_pb2.Trajectory())
    except json_format.ParseError as exc:
        raise ValueError(f"{where}: not a leap.v1.Trajectory: {exc}") from None


def load_trajectories(path: str | Path) -> list[common_pb2.Trajectory]:
    """Every trajectory in a .json or .jsonl file, in order."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{path} is empty")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [parse_trajectory(whole, str(path))]
    if isinstance(whole, list):
        return [parse_trajectory(item, f"{path}[{i}]") for i, item in enumerate(whole)]
    trajectories = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        trajectories.append(parse_trajectory(obj, f"{path}:{number}"))
    return trajectories
