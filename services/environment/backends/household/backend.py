"""The `household` backend: tasks, episodes, privileged state and experts of the household world.

Privileged state (PrivilegedInfo) after a replayed history, in LEAP's ALFWorld form:

- essential_objects: the task's object instances the optimal plan from the replayed state uses (and,
  for two-object tasks, the one already in place), plus the lamp for look tasks, e.g. ["apple 2"].
- critical_locations: where those objects are, then the receptacles the optimal plan works at
  (appliance, destination, lamp), e.g. ["fridge 1", "microwave 1", "countertop 2"].
- optimal_actions: the planner's shortest action sequence from the replayed state.
- facts: sentences about every object of the task's kinds (all instances, not only the essential
  ones) and the task's lamp: where it is ("apple 2 is in fridge 1", "desklamp 1 is on desk 1", "the
  agent is carrying apple 1") and its state ("apple 1 is hot", "desklamp 1 is switched on").
- secrets: for every object of those kinds that the agent has NOT perceived given the replayed
  history (never listed in an observation), three strings: its location fact exactly as in `facts`
  ("apple 2 is in fridge 1"), the receptacle instance that hides it ("fridge 1") and its own instance
  name ("apple 2"). Nothing else: receptacle names as such, object kinds and priors are public, and
  an object the agent has seen is no secret anymore (only the agent moves objects, so what it saw is
  still true). Match secrets as whole words ("cabinet 1" must not match "cabinet 10").
"""

from __future__ import annotations

from typing import Any, Sequence

from services.environment.backends import base
from services.environment.backends.household import experts, priors
from services.environment.backends.household.generator import (
    SPLITS,
    VERSION,
    HouseholdConfig,
    TaskSet,
    parse_task_id,
    task_id_of,
)
from services.environment.backends.household.planner import DISPOSE, LAMP_GO, LAMP_USE, PLACE, PROCESS, plan_for
from services.environment.backends.household.world import (
    FLAG_WORD,
    HELD,
    ON,
    TASK_TYPES,
    Knowledge,
    Scene,
    State,
    candidates,
    initial_text,
    is_won,
    transition,
)
from services.environment.backends.options import (
    config_from_options as options_config,
    config_or_options,
    typed_value,
)
from services.runtime.errors import InvalidArgument, NotFound

NAME = "household"
ENGINE = f"{NAME} {VERSION}"


def config_from_options(options: dict[str, Any]) -> HouseholdConfig:
    """A HouseholdConfig from keyword options whose values may be strings (from a command line)."""
    return options_config(HouseholdConfig, options, NAME, typed_value(NAME))


class HouseholdEpisode(base.EpisodeState):
    def __init__(self, scene: Scene, task: base.TaskSummary, horizon: int, verbose: bool):
        self.scene = scene
        self.task = task
        self.horizon = horizon
        self._verbose = verbose
        self.state: State = scene.initial_state()
        self.knowledge = Knowledge()

    def reset(self) -> base.Observation:
        return base.Observation(text=initial_text(self.scene),
                                candidates=tuple(candidates(self.scene, self.state, self._verbose)))

    def step(self, action: str) -> base.Observation:
        self._begin_step()
        outcome = transition(self.scene, self.state, action)
        self.state = outcome.state
        self.knowledge = self.knowledge.after(self.scene, outcome)
        won = is_won(self.scene, self.state)
        truncated = self._settle(won=won, score=1.0 if won else 0.0)
        return self._observation(outcome.text, () if self._done else candidates(self.scene, self.state, self._verbose),
                                 reward=self._score, truncated=truncated, valid=outcome.valid)

    def state_key(self) -> bytes:
        # The world is deterministic, and texts, candidates and the win depend on the task's scene
        # (fixed) and on `state` only; the agent's knowledge changes no observation.
        return repr(tuple(self.state)).encode()


class HouseholdBackend(base.Backend):
    """The embedded ALFWorld-style world. Options are HouseholdConfig fields (strings accepted)."""

    name = NAME

    def __init__(self, config: HouseholdConfig | None = None, **options: Any):
        self.config = config_or_options(config, options, config_from_options, "a HouseholdConfig")
        self._tasks = TaskSet(self.config)

    # --- tasks ---------------------------------------------------------------------------------------

    def spec(self) -> base.EnvironmentSpec:
        return base.EnvironmentSpec(
            name=NAME,
            description="Embedded ALFWorld-style household: receptacles, objects placed by common-sense "
                        "priors, ALFWorld's grammar and its six task types.",
            splits=SPLITS, action_space=base.CANDIDATES, default_horizon=self.config.horizon,
            version=ENGINE, task_types=TASK_TYPES, experts=experts.EXPERTS,
        )

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            sizes = ", ".join(f"{s} ({self.config.split_size(s)} tasks)" for s in SPLITS)
            raise NotFound(f"unknown split {split!r} of {NAME}; valid splits: {sizes}")

    def num_tasks(self, split: str) -> int:
        self._check_split(split)
        return self.config.split_size(split)

    def scene(self, task_id: str) -> Scene:
        parsed = parse_task_id(task_id)
        if parsed is None or parsed[0] not in SPLITS or not 0 <= parsed[1] < self.config.split_size(parsed[0]):
            ranges = ", ".join(f"{task_id_of(s, 0)}..{task_id_of(s, self.config.split_size(s) - 1)}" for s in SPLITS)
            raise NotFound(f"unknown task {task_id!r} of {NAME}; valid task ids: {ranges}")
        return self._tasks.scene(*parsed)

    @staticmethod
    def _summary(scene: Scene) -> base.TaskSummary:
        task = scene.task
        return base.TaskSummary(task.task_id, task.split, task.goal, task.task_type)

    def task(self, task_id: str) -> base.TaskSummary:
        return self._summary(self.scene(task_id))

    def list_tasks(self, split: str, offset: int, limit: int) -> list[base.TaskSummary]:
        size = self.num_tasks(split)
        return [self._summary(self._tasks.scene(split, i)) for i in range(max(0, offset), min(size, offset + limit))]

    def start(self, task_id: str, horizon: int) -> HouseholdEpisode:
        scene = self.scene(task_id)
        return HouseholdEpisode(scene, self._summary(scene), horizon or self.config.horizon,
                                self.config.verbose_candidates)

    # --- privileged side -----------------------------------------------------------------------------

    def replay(self, task_id: str, actions: Sequence[str]) -> tuple[Scene, State, Knowledge]:
        """The state and the agent's knowledge after `actions` from the task's initial state."""
        scene = self.scene(task_id)
        state, knowledge = scene.initial_state(), Knowledge()
        for action in actions:
            outcome = transition(scene, state, action)
            state, knowledge = outcome.state, knowledge.after(scene, outcome)
        return scene, state, knowledge

    def privileged_state(self, task_id: str, actions: Sequence[str]) -> base.PrivilegedInfo:
        scene, state, knowledge = self.replay(task_id, actions)
        task = scene.task
        layout = scene.layout
        kinds = {task.obj_kind, task.lamp_kind} - {""}
        task_objects = [o for o, kind in enumerate(scene.obj_kinds) if kind in kinds]
        plan = plan_for(scene, state)

        essential: list[int] = []
        critical: list[int] = []
        for tag in plan.tags:
            useful = tag.obj >= 0 and tag.purpose != DISPOSE and scene.obj_kinds[tag.obj] in kinds
            if useful and tag.obj not in essential:
                essential.append(tag.obj)
        destinations = [tag.recep for tag in plan.tags if tag.purpose == PLACE]
        for o in task_objects:  # two-object tasks: the one already in place belongs to the goal
            if o not in essential and state.locs[o] in destinations:
                essential.append(o)
        if not plan.actions:
            essential = list(task_objects)
        for o in essential:
            if state.locs[o] != HELD and state.locs[o] not in critical:
                critical.append(state.locs[o])
        for tag in plan.tags:
            if tag.recep >= 0 and tag.purpose in (PROCESS, PLACE, LAMP_USE, LAMP_GO) and tag.recep not in critical:
                critical.append(tag.recep)

        facts: list[str] = []
        secrets: list[str] = []
        for o in sorted(task_objects, key=lambda i: scene.objects[i]):
            name = scene.objects[o]
            where = state.locs[o]
            if where == HELD:
                facts.append(f"the agent is carrying {name}")
            else:
                recep = layout.receptacles[where]
                fact = f"{name} is {priors.preposition(layout.recep_kinds[where])} {recep}"
                facts.append(fact)
                if not knowledge.known >> o & 1:
                    secrets.extend(s for s in (fact, recep, name) if s not in secrets)
            if scene.is_lamp(o):
                if state.flags[o] & ON:
                    facts.append(f"{name} is switched on")
            else:
                facts.extend(f"{name} is {word}" for bit, word in FLAG_WORD if state.flags[o] & bit)

        return base.PrivilegedInfo(
            task=self._summary(scene),
            essential_objects=tuple(scene.objects[o] for o in essential),
            critical_locations=tuple(layout.receptacles[r] for r in critical),
            optimal_actions=tuple(plan.actions),
            facts=tuple(facts),
            secrets=tuple(secrets),
            extra={"engine": ENGINE, "room": task.room, "replayed_actions": str(len(actions)),
                   "optimal_length": str(len(plan.actions)), "won": str(is_won(scene, state)).lower()},
        )

    def expert_advice(self, task_id: str, actions: Sequence[str], expert: str) -> base.ExpertAdvice:
        self._check_expert(expert)
        scene, state, knowledge = self.replay(task_id, actions)
        advice = experts.advise(scene, state, knowledge, expert)
        return base.ExpertAdvice(advice.next_action, advice.plan, advice.already_won, advice.rationale)

    def demonstration(self, task_id: str, expert: str, horizon: int) -> base.Demonstration:
        self._check_expert(expert)
        episode = self.start(task_id, horizon)
        obs = episode.reset()
        steps: list[base.DemoStep] = []
        while not obs.done:
            advice = experts.advise(episode.scene, episode.state, episode.knowledge, expert)
            if not advice.next_action:  # cannot happen before the goal is reached; guard anyway
                break
            nxt = episode.step(advice.next_action)
            steps.append(base.DemoStep(obs.text, obs.candidates, advice.next_action, advice.rationale,
                                       nxt.reward, nxt.last_action_valid, nxt.text))
            obs = nxt
        return base.Demonstration(
            task=episode.task, expert=expert, steps=tuple(steps), done=obs.done, won=episode.won,
            score=episode.score, truncated=obs.truncated,
            metadata={"engine": ENGINE, "expert": expert, "horizon": str(episode.horizon), "task_id": task_id},
        )

    @staticmethod
    def _check_expert(expert: str) -> None:
        if expert not in experts.EXPERTS:
            raise InvalidArgument(f"unknown expert {expert!r}; valid experts: {', '.join(experts.EXPERTS)}")
