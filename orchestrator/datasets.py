"""Training data from trajectories, in the trainer's schemas, and LEAP's aggregation.

Every prompt is rendered with the student's own template code (services.student.prompts), from
what the student observed: the history the student itself produced (on-policy, DAgger-style) or,
for iteration 0, the expert's history. Nothing privileged enters a prompt: the inputs are only the
goal, past observations/actions, the current observation and its candidates.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from google.protobuf import json_format

from leap.v1 import common_pb2, teacher_pb2
from services.runtime.files import atomic_write_jsonl
from services.trainer import methods as training_methods


def _prompt(env: str, trajectory: common_pb2.Trajectory, t: int, window: int) -> list[dict]:
    from services.student.prompts import render_messages

    steps = trajectory.steps
    history = [(s.observation, s.action) for s in steps[:t]]
    return render_messages(env, trajectory.goal, history, steps[t].observation, list(steps[t].candidates),
                           history_window=window)


def _target(reason: str, action: str) -> str:
    from services.student.prompts import format_target

    return format_target(reason, action)


def _meta(trajectory: common_pb2.Trajectory, t: int, source: str) -> dict:
    return {"task_id": trajectory.task.task_id, "task_type": trajectory.task_type, "t": t, "source": source}


def demonstration_rows(env: str, demos: list[common_pb2.Trajectory], window: int) -> list[dict]:
    """Iteration 0 (BC): every step of every expert demonstration, with the teacher's reason."""
    rows = []
    for demo in demos:
        for t, step in enumerate(demo.steps):
            rows.append({"messages": _prompt(env, demo, t, window), "completion": _target(step.reason, step.action),
                         "meta": _meta(demo, t, "demonstration")})
    return rows


def correction_rows(env: str, pairs: list[tuple[common_pb2.Trajectory, teacher_pb2.Correction]], window: int,
                    method: str, keep_unchanged: bool) -> list[dict]:
    """Iterations >= 1: the rows of every corrected step, prompt = the student's own history at t.

    The rows are in `method`'s schema (its `correction_rows` in services.trainer.methods): for sft
    completion = corrected; dpo: chosen = corrected, rejected = the student's original; kto: the
    corrected step labelled desirable and the original undesirable. With `keep_unchanged`, steps
    the teacher kept become rows too, for methods that imitate a target (sft).
    """
    spec = training_methods.get(method)
    keep_unchanged = keep_unchanged and spec.trains_on_unchanged_steps
    rows = []
    for trajectory, correction in pairs:
        if not correction.ok:
            continue
        for cstep in correction.steps:
            t = cstep.index
            if t >= len(trajectory.steps):
                continue
            if not cstep.is_corrected and not keep_unchanged:
                continue
            messages = _prompt(env, trajectory, t, window)
            chosen = _target(cstep.reason, cstep.action)
            original = trajectory.steps[t]
            rejected = _target(original.reason, original.action)
            rows.extend(spec.correction_rows(messages, chosen, rejected, _meta(trajectory, t, "correction")))
    return rows


def action_kind(row: dict) -> str:
    """The kind of decision a row teaches: its target action's first word ("go", "open", "take",
    "search[...]" -> "search"), plus " (holding)" when the prompt's household notes say the agent
    carries something.

    The action is read from the supervised target (`completion`, or `chosen` for DPO) by the
    student's own output parser; the notes from the row's last user message (what the student saw).
    Walking while searching and walking to deliver are different decisions with the same first word,
    so " (holding)" separates them: a balanced subsample then keeps its share of delivery walks even
    though search walks are far more common.
    """
    from services.student.memory import held_in_prompt
    from services.student.prompts import parse_output

    words = parse_output(row.get("completion", row.get("chosen", "")) or "", []).action.split()
    if not words:
        return ""
    kind = words[0].split("[", 1)[0].lower()
    users = [m.get("content", "") for m in row.get("messages", []) if m.get("role") == "user"]
    if users and held_in_prompt(users[-1]):
        kind += " (holding)"
    return kind


def balanced_quotas(counts: dict[str, int], size: int) -> dict[str, int]:
    """How many rows of each kind to keep, `size` in all: shares proportional to the square root of
    each kind's count, never more than a kind has, the rest handed on to the kinds that have more.

    A square root sits between sampling at random (shares proportional to the counts, where a kind
    seen in 5 % of the rows gets 5 % of a small training set) and equal shares (where the commonest
    decisions lose most of their rows).
    """
    quotas = {kind: 0 for kind in counts}
    left = min(size, sum(counts.values()))
    open_kinds = {kind for kind, n in counts.items() if n > 0}
    while left > 0 and open_kinds:
        total = sum(math.sqrt(counts[kind]) for kind in open_kinds)
        ideal = {kind: left * math.sqrt(counts[kind]) / total for kind in open_kinds}
        full = {kind for kind in open_kinds if ideal[kind] >= counts[kind]}
        if full:  # these kinds give all they have; the rest is shared again among the others
            for kind in full:
                quotas[kind] = counts[kind]
                left -= counts[kind]
            open_kinds -= full
            continue
        # Largest remainders: floors first, then one more row to the kinds closest to their next row.
        for kind in open_kinds:
            quotas[kind] = math.floor(ideal[kind])
        left -= sum(quotas[kind] for kind in open_kinds)
        for kind in sorted(open_kinds, key=lambda k: (quotas[k] - ideal[k], k))[:left]:
            quotas[kind] += 1
        break
    return quotas


def _subsample(rows: list[dict], size: int, rng: random.Random, balance: bool) -> list[dict]:
    if not balance or size >= len(rows):
        return rng.sample(rows, min(size, len(rows)))
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(action_kind(row), []).append(row)
    quotas = balanced_quotas({kind: len(group) for kind, group in by_kind.items()}, size)
    picked = []
    for kind in sorted(by_kind):
        picked.extend(rng.sample(by_kind[kind], quotas[kind]))
    return picked


def aggregate(per_iteration: list[list[dict]], seed: int, max_rows: int = 0,
              balance_actions: bool = False) -> list[dict]:
    """LEAP's aggregation: subsample each iteration's data to the size of the smallest, then mix.

    `max_rows` > 0 caps the mixture: every iteration then contributes `max_rows // iterations` rows at
    most (still equal shares), which keeps the cost of a training job flat across iterations when
    each iteration continues from the previous adapter.

    `balance_actions`: an iteration's rows are subsampled by action kind (`action_kind`,
    `balanced_quotas`) rather than at random, so that rare decisions survive. Corrections of failed
    rollouts are dominated by one kind (walking, in household worlds), and a random subsample keeps
    that imbalance: the rarer decisions (opening, taking, placing) would get too few rows to learn.
    """
    non_empty = [rows for rows in per_iteration if rows]
    if not non_empty:
        return []
    size = min(len(rows) for rows in non_empty)
    if max_rows > 0:
        size = max(1, min(size, max_rows // len(non_empty)))
    rng = random.Random(seed)
    mixed = []
    for rows in non_empty:
        mixed.extend(_subsample(rows, size, rng, balance_actions))
    rng.shuffle(mixed)
    return mixed


def write_rows(path: Path, rows: list[dict]) -> Path:
    return atomic_write_jsonl(path, rows)


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_trajectories(path: Path, trajectories: list[common_pb2.Trajectory]) -> Path:
    return atomic_write_jsonl(path, [json_format.MessageToDict(t) for t in trajectories])


def read_trajectories(path: Path) -> list[common_pb2.Trajectory]:
    return [json_format.ParseDict(row, common_pb2.Trajectory()) for row in read_rows(path)]


def write_corrections(path: Path, pairs: list[tuple[common_pb2.Trajectory, teacher_pb2.Correction]]) -> Path:
    return atomic_write_jsonl(path, [{"trajectory": json_format.MessageToDict(t),
                                      "correction": json_format.MessageToDict(c)} for t, c in pairs])


def read_corrections(path: Path) -> list[tuple[common_pb2.Trajectory, teacher_pb2.Correction]]:
    return [(json_format.ParseDict(r["trajectory"], common_pb2.Trajectory()),
             json_format.ParseDict(r["correction"], teacher_pb2.Correction())) for r in read_rows(path)]
