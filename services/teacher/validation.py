"""Tolerant parsing and strict validation of an LLM teacher's JSON answer.

Parsing takes the first balanced {...} of the answer (code fences, prose before or after, and
trailing commas are tolerated). Validation checks what the service promises about a correction:
one step per trajectory step (t = 0..n-1, each once), every action legal at its step (one of the
step's candidates when it has candidates), every reason present, and, below realizability 75, no
reason or summary revealing a privileged fact the student had not observed by then.
Every problem is reported in words the model can act on when the answer is fed back for a retry.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from services.teacher.actions import legality_error, match_candidate, same_action
from services.teacher.leak import SecretIndex, TrajectorySecrets
from services.teacher.types import CorrectedStep

MAX_ERRORS_REPORTED = 8


class AnswerFormatError(ValueError):
    """The answer holds no usable JSON object."""


def first_json_object(text: str) -> dict:
    """The first balanced {...} in `text`, parsed; AnswerFormatError says what is wrong otherwise."""
    if not text or not text.strip():
        raise AnswerFormatError("the answer is empty; reply with one JSON object")
    start = text.find("{")
    if start < 0:
        raise AnswerFormatError("the answer contains no JSON object (no '{' found)")
    depth = 0
    in_string = False
    escaped = False
    end = -1
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                end = i + 1
                break
    if end < 0:
        raise AnswerFormatError("the JSON object is not closed (the answer was cut off?); "
                                "reply with a complete, shorter JSON object")
    candidate = text[start:end]
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError as exc:
        repaired = re.sub(r",\s*([}\]])", r"\1", candidate)
        try:
            value = json.loads(repaired)
        except json.JSONDecodeError:
            raise AnswerFormatError(f"the answer is not valid JSON: {exc.msg} at character {exc.pos}") from None
        except (ValueError, RecursionError):
            raise AnswerFormatError("the answer's JSON holds a number too long or nesting too deep") from None
    except (ValueError, RecursionError):
        # int() refuses numbers of over 4,300 digits; thousands of nested brackets exhaust the recursion limit
        raise AnswerFormatError("the answer's JSON holds a number too long or nesting too deep") from None
    if not isinstance(value, dict):
        raise AnswerFormatError("the answer's JSON is not an object")
    return value


def _as_int(value) -> int | None:
    """A step index written by the model: an int, an integral float, or ASCII digits; None otherwise.

    Model output is untrusted text: 1e400 (a float inf), 5,000 digits (over int()'s digit limit) and
    full-width or superscript digits are "not an integer", never an exception."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith("-") else text
        if digits and len(digits) <= 18 and digits.isascii() and digits.isdigit():
            return int(text)
    return None


@dataclass
class Validated:
    """Outcome of validating one answer: the steps and summary when ok, the problems otherwise."""

    errors: list[str] = field(default_factory=list)
    summary: str = ""
    steps: list[CorrectedStep] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def message(self) -> str:
        shown = self.errors[:MAX_ERRORS_REPORTED]
        more = len(self.errors) - len(shown)
        return "; ".join(shown) + (f"; and {more} more problem(s)" if more > 0 else "")


def _is_unicode(value: str) -> bool:
    """False for a string JSON let through that is no Unicode text (a lone surrogate such as "\\ud800"),
    which no protobuf message can carry: a model's answer holding one is retried, not a server error."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _indexed_steps(obj: dict, n: int, errors: list[str], want_action: bool) -> dict[int, dict]:
    steps = obj.get("steps")
    if not isinstance(steps, list):
        errors.append('"steps" must be a list with one object per trajectory step')
        return {}
    by_t: dict[int, dict] = {}
    for position, item in enumerate(steps):
        if not isinstance(item, dict):
            errors.append(f"steps[{position}] is not an object")
            continue
        t = _as_int(item.get("t", position))
        if t is None:
            errors.append(f'steps[{position}] has no integer "t"')
            continue
        if t in by_t:
            errors.append(f"t={t} appears twice")
            continue
        by_t[t] = item
    if len(steps) != n or set(by_t) != set(range(n)):
        missing = sorted(set(range(n)) - set(by_t))
        extra = sorted(set(by_t) - set(range(n)))
        detail = []
        if missing:
            detail.append("missing t = " + ", ".join(map(str, missing[:10])))
        if extra:
            detail.append("unknown t = " + ", ".join(map(str, extra[:10])))
        errors.append(f"the trajectory has {n} steps, so \"steps\" needs exactly {n} entries with t = 0..{n - 1}"
                      f" (got {len(steps)}{': ' + ', '.join(detail) if detail else ''})")
    for t, item in by_t.items():
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            errors.append(f't={t}: "reason" must be a non-empty string')
        elif not _is_unicode(reason):
            errors.append(f't={t}: "reason" holds a lone surrogate escape, which is not Unicode text')
        if want_action and not isinstance(item.get("action"), str):
            errors.append(f't={t}: "action" must be a string')
        elif want_action and not _is_unicode(item["action"]):
            errors.append(f't={t}: "action" holds a lone surrogate escape, which is not Unicode text')
    return by_t


def validate_correction(obj: dict, trajectory, index: SecretIndex, *, leak_free: bool,
                        secrets: TrajectorySecrets | None = None) -> Validated:
    """Check a parsed correction {"summary", "steps": [{"t", "reason", "action"}]} of `trajectory`.

    `secrets`: the trajectory's TrajectorySecrets, built once for all the attempts of one job."""
    result = Validated()
    errors = result.errors
    steps = list(trajectory.steps)
    summary = obj.get("summary", "")
    if not isinstance(summary, str):
        errors.append('"summary" must be a string')
        summary = ""
    elif not _is_unicode(summary):
        errors.append('"summary" holds a lone surrogate escape, which is not Unicode text')
        summary = ""
    by_t = _indexed_steps(obj, len(steps), errors, want_action=True)
    if errors:
        return result
    if leak_free and secrets is None:
        secrets = TrajectorySecrets(index, trajectory)
    for t, step in enumerate(steps):
        item = by_t[t]
        action = item["action"].strip()
        problem = legality_error(action, list(step.candidates))
        if problem:
            errors.append(f"t={t}: {problem}")
            continue
        if step.candidates:
            action = match_candidate(action, list(step.candidates)) or action
        reason = item["reason"].strip()
        if leak_free:
            for leak in secrets.leaks(reason, t):
                errors.append(f"t={t}: the reason reveals {leak.secret!r}, which the student has not observed; "
                              "explain with general knowledge instead")
            if not step.candidates:  # a free-form action (a shell command) can write a hidden value itself
                for leak in secrets.leaks(action, t):
                    if not index.is_place(leak.secret):
                        errors.append(f"t={t}: the action writes {leak.secret!r}, a hidden value the student has "
                                      "not observed; correct with a command that finds it")
        result.steps.append(CorrectedStep(
            index=t, reason=reason, action=action, is_corrected=not same_action(action, step.action),
            original_action=step.action, original_reason=step.reason, source="llm",
        ))
    if leak_free:
        for leak in secrets.leaks(summary, len(steps)):
            errors.append(f"the summary reveals {leak.secret!r}, which the student never observed")
    result.summary = summary.strip()
    if errors:
        result.steps = []
    return result


def validate_annotation(obj: dict, demonstration, index: SecretIndex,
                        secrets: TrajectorySecrets | None = None) -> Validated:
    """Check a parsed annotation {"steps": [{"t", "reason"}]} of an expert demonstration."""
    result = Validated()
    steps = list(demonstration.steps)
    by_t = _indexed_steps(obj, len(steps), result.errors, want_action=False)
    if result.errors:
        return result
    secrets = secrets or TrajectorySecrets(index, demonstration)
    for t in range(len(steps)):
        reason = by_t[t]["reason"].strip()
        for leak in secrets.leaks(reason, t):
            result.errors.append(f"t={t}: the reason reveals {leak.secret!r}, which has not been observed yet")
        result.reasons.append(reason)
    if result.errors:
        result.reasons = []
    return result
