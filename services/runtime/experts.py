"""Expert names, their leap.v1.ExpertKind numbers, and the teacher's realizability levels: one home
for what the environment, the teacher and the orchestrator all name.

An environment offers up to three experts (services.environment.backends.base): the privileged
PLANNER (knows the hidden state), the SEARCHER (uses only what the agent observed, searching in a
fixed order) and the PRIOR_SEARCHER (the same, searching in order of common-sense priors). The
oracle teacher places them on the realizability axis (services.teacher.levels).
"""

from __future__ import annotations

from typing import Iterable

from leap.v1 import environment_pb2

PLANNER = "planner"
SEARCHER = "searcher"
PRIOR_SEARCHER = "prior_searcher"

#: expert name -> leap.v1.ExpertKind
EXPERT_KINDS: dict[str, int] = {
    PLANNER: environment_pb2.EXPERT_KIND_PLANNER,
    SEARCHER: environment_pb2.EXPERT_KIND_SEARCHER,
    PRIOR_SEARCHER: environment_pb2.EXPERT_KIND_PRIOR_SEARCHER,
}
#: leap.v1.ExpertKind -> expert name
EXPERT_NAMES: dict[int, str] = {kind: name for name, kind in EXPERT_KINDS.items()}

#: Trajectory.agent of a demonstration by each expert (what reports and datasets show).
DEMO_AGENTS: dict[str, str] = {PLANNER: "planner", SEARCHER: "searching_expert",
                               PRIOR_SEARCHER: "prior_searching_expert"}

#: The reference rows of a run's report, evaluated on the same held-out tasks as the student:
#: report label -> (expert name, display name).
REFERENCE_EXPERTS: dict[str, tuple[str, str]] = {
    "searching_expert": (SEARCHER, "searching expert"),
    "privileged_planner": (PLANNER, "privileged planner"),
}

#: The teacher's realizability levels, and the one a request that does not say gets.
REALIZABILITY_LEVELS: tuple[int, ...] = (0, 25, 50, 75, 100)
DEFAULT_REALIZABILITY_LEVEL = 50


def expert_name(kind: int) -> str:
    """The expert name of an ExpertKind ("" for UNSPECIFIED or unknown numbers)."""
    return EXPERT_NAMES.get(kind, "")


def expert_kind(name: str) -> int:
    """The ExpertKind of an expert name (EXPERT_KIND_UNSPECIFIED for an unknown one)."""
    return EXPERT_KINDS.get(name, environment_pb2.EXPERT_KIND_UNSPECIFIED)


def expert_kinds(names: Iterable[str]) -> list[int]:
    """ExpertKind numbers of expert names, in the given order (unknown names are skipped)."""
    return [EXPERT_KINDS[name] for name in names if name in EXPERT_KINDS]


def expert_names(kinds: Iterable[int]) -> tuple[str, ...]:
    """Expert names of ExpertKind numbers, in the given order (unknown numbers are skipped)."""
    return tuple(EXPERT_NAMES[kind] for kind in kinds if kind in EXPERT_NAMES)
