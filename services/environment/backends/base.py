"""The interface every environment backend implements (household today; alfworld, textworld,
intercode_bash, webshop plug in the same way).

A backend is transport-free plain Python: the session manager (service.py) owns sessions, limits,
validation of raw action bytes and errors; a backend owns its tasks, its episodes and, when it has
any, its privileged state and experts.

What the interface allows beyond candidate lists:
- free-form actions (a shell command): `action_space = "free_form"`, empty `candidates`;
- templated actions (`search[...]`): `action_space = "templated"` and `Observation.action_templates`;
- partial credit: `Observation.score` in [0, 1] is not tied to `won`;
- privileged state in any of LEAP's forms (`PrivilegedInfo`: ALFWorld-style objects and locations,
  WebShop's goal record, InterCode's gold command) and any subset of the expert kinds.

Backends raise services.runtime.errors (NotFound naming the valid choices, InvalidArgument, ...),
never transport errors.

What a new backend must provide for a whole LEAP run (nothing else in the four services changes):

1. `spec()`: its name, splits (at least `train` for demonstrations and rollouts and `valid_unseen`
   for evaluation, disjoint), action space, default horizon, engine version, task types, and
   `experts`: the expert kinds it serves. LEAP takes BC demonstrations from the searcher when there
   is one, else from the planner; the oracle teacher places its realizability levels on the experts
   listed (services.teacher.levels), so a planner alone is enough.
2. Tasks and episodes: `num_tasks`, `list_tasks` (stable order), `task` (strict id parsing: hostile
   ids are InvalidArgument or NotFound, never a crash), `start` -> an Episode whose observations
   carry no privileged fact (the goal text, observation text, candidates and `info` are all shown
   to the student). Subclassing `EpisodeState` rather than `Episode` gives an episode its `steps`,
   `done`, `won` and `score` and the usual start and end of `step()`.
3. Privileged side, replayed: `privileged_state(task_id, actions)` and `expert_advice(task_id,
   actions, expert)` for ANY prefix of actions, invalid ones included, deterministically from the
   task's initial state; the oracle teacher calls them at every step of a student's trajectory.
   `PrivilegedInfo.secrets` lists the short strings the agent has not observed after those actions
   (the teacher refuses reasons that name them below realizability 75); `ExpertAdvice.rationale`
   explains the next action as the agent's own thought without naming a secret (it becomes the
   reason the student learns to write).
4. `demonstration(task_id, expert, horizon)`: a whole expert episode (BC data and the reference rows
   of the results table).
5. Registration: one line in backends/__init__.py (`_REGISTRY`), imported only when served.

Optional: a student prompt spec (services/student/prompts.py ENV_SPECS: role sentence and action
format; the generic one fits any environment), teacher templates (services/teacher/templates/oracle/
<name>/ and llm/<name>/, falling back to default/), and a teacher profile when the environment's
grammar lets the teacher name more kinds of mistakes than invalid and repeated actions
(services/teacher/profiles/).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

from services.runtime.errors import FailedPrecondition
from services.runtime.experts import PLANNER, PRIOR_SEARCHER, SEARCHER  # noqa: F401 - the backends' names

# Action spaces (common.proto ActionSpace, by name).
CANDIDATES = "candidates"
FREE_FORM = "free_form"
TEMPLATED = "templated"
ACTION_SPACES = (CANDIDATES, FREE_FORM, TEMPLATED)

EPISODE_OVER = "the episode is over; start a new one"  # FailedPrecondition of a step after the end

# Expert kinds (environment.proto ExpertKind, by name): PLANNER, SEARCHER, PRIOR_SEARCHER, imported
# above from services.runtime.experts, where every service's expert names live.


@dataclass(frozen=True)
class EnvironmentSpec:
    """What ListEnvironments says about a backend."""

    name: str
    description: str
    splits: tuple[str, ...]
    action_space: str
    default_horizon: int
    version: str  # engine name and version, recorded in run manifests ("household 1.0")
    task_types: tuple[str, ...] = ()
    experts: tuple[str, ...] = ()  # expert kinds GetExpertActions / GetDemonstration support


@dataclass(frozen=True)
class TaskSummary:
    """A task as listed: its id, split, instruction and family."""

    task_id: str
    split: str
    goal: str
    task_type: str = ""


@dataclass(frozen=True)
class Observation:
    """What the agent perceives after Reset or Step (environment.proto Observation)."""

    text: str
    candidates: tuple[str, ...] = ()
    reward: float = 0.0
    score: float = 0.0
    done: bool = False
    won: bool = False
    truncated: bool = False
    step: int = 0
    last_action_valid: bool = True
    action_templates: tuple[str, ...] = ()
    info: dict[str, str] = field(default_factory=dict)
    #: Filled by the service from Episode.state_key (keyed per session); backends leave it empty.
    state_digest: str = ""


@dataclass(frozen=True)
class PrivilegedInfo:
    """LEAP's privileged state of a task after a replayed history (environment.proto PrivilegedState)."""

    task: TaskSummary
    essential_objects: tuple[str, ...] = ()
    critical_locations: tuple[str, ...] = ()
    optimal_actions: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    goal_record_json: str = ""
    gold_command: str = ""
    gold_output: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpertAdvice:
    """An expert's next action after a replayed history, its plan from there and its rationale."""

    next_action: str
    plan: tuple[str, ...]
    already_won: bool
    rationale: str = ""


@dataclass(frozen=True)
class DemoStep:
    observation: str
    candidates: tuple[str, ...]
    action: str
    reason: str
    reward: float
    action_valid: bool
    next_observation: str


@dataclass(frozen=True)
class Demonstration:
    """A whole expert episode (common.proto Trajectory)."""

    task: TaskSummary
    expert: str
    steps: tuple[DemoStep, ...]
    done: bool
    won: bool
    score: float
    truncated: bool
    metadata: dict[str, str] = field(default_factory=dict)


class Episode(abc.ABC):
    """One play of one task. Not thread-safe: the session manager serialises calls per session."""

    task: TaskSummary
    horizon: int

    @abc.abstractmethod
    def reset(self) -> Observation:
        """The first observation (called once, right after the episode is created)."""

    @abc.abstractmethod
    def step(self, action: str) -> Observation:
        """Apply one action (already validated as non-empty UTF-8 text) and observe."""

    @property
    @abc.abstractmethod
    def steps(self) -> int: ...

    @property
    @abc.abstractmethod
    def done(self) -> bool: ...

    @property
    @abc.abstractmethod
    def won(self) -> bool: ...

    @property
    @abc.abstractmethod
    def score(self) -> float: ...

    def state_key(self) -> bytes | None:
        """Everything the episode's future depends on, apart from its step count, as bytes; None: unknown.

        Two equal keys promise that every sequence of actions from either point gets the same
        observations (text, candidates, reward, score, end). Return bytes only where the world is
        deterministic and the key covers all of its state, hidden state included: a client stops an
        episode as a cycle when a key comes back. The service never shows the key itself, only a
        digest keyed per session (Observation.state_digest).
        """
        return None

    def close(self) -> None:
        """Release what the episode holds (a container, a sandbox); nothing for in-memory worlds."""


class EpisodeState(Episode):
    """An Episode that keeps its own step count, end, win and score: what most backends subclass.

    It answers `steps`, `done`, `won` and `score` from `_steps`, `_done`, `_won` and `_score` (0, False,
    False, 0.0 until set), and gives `step()` its usual beginning and end:

        def step(self, action):
            self._begin_step()                   # FailedPrecondition once the episode is over
            ...                                  # apply the action
            truncated = self._settle(won=..., score=...)   # one more step, and its outcome
            return self._observation(text, candidates, reward=..., truncated=truncated, valid=...)

    A backend whose episode counts or scores differently overrides the property concerned.
    """

    _steps: int = 0
    _done: bool = False
    _won: bool = False
    _score: float = 0.0

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def done(self) -> bool:
        return self._done

    @property
    def won(self) -> bool:
        return self._won

    @property
    def score(self) -> float:
        return self._score

    def _begin_step(self) -> None:
        """Refuse a step once the episode is over (FailedPrecondition)."""
        if self._done:
            raise FailedPrecondition(EPISODE_OVER)

    def _settle(self, *, won: bool, score: float, ended: bool = False) -> bool:
        """Count the step just applied and record its outcome; the episode ends when won, when `ended`
        (lost, bought) or at the horizon. Returns whether it was truncated (the horizon came first)."""
        self._steps += 1
        self._won, self._score = won, score
        truncated = not (won or ended) and self._steps >= self.horizon
        self._done = won or ended or truncated
        return truncated

    def _observation(self, text: str, candidates: Sequence[str] = (), *, reward: float = 0.0,
                     truncated: bool = False, valid: bool = True, **fields: Any) -> Observation:
        """The Observation of the episode as it now stands (no candidates once it is over)."""
        return Observation(text=text, candidates=() if self._done else tuple(candidates), reward=reward,
                           score=self._score, done=self._done, won=self._won, truncated=truncated,
                           step=self._steps, last_action_valid=valid, **fields)


class Backend(abc.ABC):
    """An environment: its tasks, episodes over them, and optionally privileged state and experts."""

    name: str = ""

    @abc.abstractmethod
    def spec(self) -> EnvironmentSpec: ...

    @abc.abstractmethod
    def num_tasks(self, split: str) -> int:
        """Number of tasks of a split; unknown split -> NotFound naming the valid ones."""

    @abc.abstractmethod
    def list_tasks(self, split: str, offset: int, limit: int) -> list[TaskSummary]:
        """Tasks [offset, offset + limit) of a split, in a stable order."""

    @abc.abstractmethod
    def task(self, task_id: str) -> TaskSummary:
        """The task with this id; unknown -> NotFound saying what ids look like."""

    def task_at(self, split: str, seed: int) -> TaskSummary:
        """The seed-th task of a split, wrapping around (ResetRequest's split + seed)."""
        size = self.num_tasks(split)
        return self.list_tasks(split, seed % size, 1)[0]

    @abc.abstractmethod
    def start(self, task_id: str, horizon: int) -> Episode:
        """A new episode of a task; horizon 0 means the default."""

    # Privileged side: backends without it keep these defaults.
    def privileged_state(self, task_id: str, actions: Sequence[str]) -> PrivilegedInfo:
        raise FailedPrecondition(f"environment {self.name!r} exposes no privileged state")

    def expert_advice(self, task_id: str, actions: Sequence[str], expert: str) -> ExpertAdvice:
        raise FailedPrecondition(f"environment {self.name!r} has no experts")

    def demonstration(self, task_id: str, expert: str, horizon: int) -> Demonstration:
        raise FailedPrecondition(f"environment {self.name!r} has no experts")

    def close(self) -> None:
        """Release backend-wide resources at server shutdown."""
