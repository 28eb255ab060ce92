"""Plain results of the teacher's logic (server.py turns them into protobuf messages)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Usage:
    """Tokens and money spent on one request (LLM calls, retries included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd
        self.calls += other.calls


@dataclass
class CorrectedStep:
    """The teacher's label for step `index`: reason and action, and what the student had done."""

    index: int
    reason: str
    action: str
    is_corrected: bool
    original_action: str
    original_reason: str = ""
    # Which expert chose the action (oracle) or "llm"; for logs and reports, not on the wire.
    source: str = ""


@dataclass
class CorrectionResult:
    """The correction of one trajectory. ok=False carries the reason in `error` and no steps."""

    ok: bool
    teacher: str
    realizability_level: int
    summary: str = ""
    steps: list[CorrectedStep] = field(default_factory=list)
    error: str = ""
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1

    @classmethod
    def failure(cls, teacher: str, level: int, error: str, *, usage: Usage | None = None,
                attempts: int = 1) -> CorrectionResult:
        return cls(ok=False, teacher=teacher, realizability_level=level, error=error,
                   usage=usage or Usage(), attempts=attempts)


@dataclass
class AnnotationResult:
    """One reason per demonstration step, or ok=False with the reason in `error`."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    error: str = ""
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1
