"""The `webshop` backend: the synthetic shop's tasks, episodes, privileged state and experts.

Action space `templated`: on the search page `Observation.action_templates` is ["search[<query>]"];
on every page `Observation.candidates` lists its clickables as `click[...]`. The episode ends on `buy
now` (reward and score: WebShop's reward of the purchase; won only at reward 1) or at the horizon
(truncated, score 0).

Privileged state (PrivilegedInfo) after a replayed history:

- goal_record_json: the goal record (asin, category, query, name, product_category,
  instruction_text, attributes, goal_options, price_upper), as WebShop's goal dicts;
- optimal_actions: the planner's plan from the replayed state; essential_objects: the product it
  buys (its asin); extra: that product's asin, title, price and options (`target_*`), the number of
  satisfying products, the reward the replayed history earned, the replayed length;
- facts: sentences about the goal and the satisfying products;
- secrets: what the agent has not observed and must not be told, relative to the replayed history:
  * the id and the title of every product that earns reward 1 and that the agent has not seen
    listed on a results page (or opened) yet: naming one points at an answer it cannot know of;
  * goal option values and attributes that the instruction does not state verbatim (none for
    generated goals, whose instructions state all of them; kept for goals written elsewhere).
  Product types, attribute phrases, option values and the price bound of the instruction are public,
  and so is a product the agent has seen listed: "open that one" is then realizable advice, as "go
  to cabinet 3" is in the household world once cabinet 3 is among the agent's candidates.

Options (strings accepted, from `--env-option`): the ShopConfig fields (products, seed, train_tasks,
valid_seen_tasks, valid_unseen_tasks, unseen_fraction, horizon); `server=URL` or `path=DIR` select the
adapter to a real WebShop installation instead (see adapter.py).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any, Sequence

from services.environment.backends import base
from services.environment.backends.options import (
    config_from_options as options_config,
    config_or_options,
)
from services.environment.backends.webshop import experts
from services.environment.backends.webshop.catalogue import VERSION, Catalogue
from services.environment.backends.webshop.goals import SPLITS, GoalSet, ShopConfig, parse_task_id, task_id_of
from services.environment.backends.webshop.search import SearchEngine
from services.environment.backends.webshop.shop import DONE, Shop, State
from services.environment.backends.webshop.task import ShopTask
from services.environment.backends.webshop.data import CATEGORIES
from services.runtime.errors import InvalidArgument, NotFound

NAME = "webshop"
ENGINE = f"{NAME}-synthetic {VERSION}"

_shops: OrderedDict[tuple[int, int], Shop] = OrderedDict()
_shops_lock = threading.Lock()


def shop_for(products: int, seed: int) -> Shop:
    """The shop of a catalogue size and seed, built once per process (the two most recent are kept)."""
    key = (products, seed)
    with _shops_lock:
        shop = _shops.get(key)
        if shop is None:
            catalogue = Catalogue(products, seed)
            shop = Shop(catalogue, SearchEngine([p.search_text() for p in catalogue.products]))
            _shops[key] = shop
            while len(_shops) > 2:
                _shops.popitem(last=False)
        _shops.move_to_end(key)
        return shop


def _shop_value(key: Any, name: str, raw: Any, default: Any) -> Any:
    kind = type(default)
    try:
        if isinstance(raw, str):
            text = raw.strip()
            if kind is int and not re.fullmatch(r"[0-9]{1,12}", text, re.ASCII):
                raise ValueError(text)
            if kind is float and not re.fullmatch(r"[0-9]{0,6}(\.[0-9]{1,6})?", text, re.ASCII):
                raise ValueError(text)
            return kind(text)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (kind is int and isinstance(raw, float)):
            raise ValueError(raw)
        return kind(raw)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"webshop option {key}={str(raw)[:40]!r} is not a valid {kind.__name__}") from None


def config_from_options(options: dict[str, Any]) -> ShopConfig:
    """A ShopConfig from keyword options whose values may be strings (from a command line)."""
    return options_config(ShopConfig, options, "webshop", _shop_value, also_valid=("path", "server"))


def _whole_word(phrase: str, text: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(phrase.lower()) + r"(?![\w])", text.lower()) is not None


class WebShopEpisode(base.EpisodeState):
    def __init__(self, task: ShopTask, summary: base.TaskSummary, horizon: int):
        self.shop_task = task
        self.shop = task.shop
        self.task = summary
        self.horizon = horizon
        self.state = State()

    def _shop_observation(self, text: str, **kw: Any) -> base.Observation:
        state = self.state
        over = self._done
        return self._observation(text, () if over else self.shop.candidates(state),
                                 action_templates=() if over else self.shop.templates(state),
                                 info={"page": state.page}, **kw)

    def reset(self) -> base.Observation:
        return self._shop_observation(self.shop.render(self.state, self.task.goal))

    def step(self, action: str) -> base.Observation:
        self._begin_step()
        outcome = self.shop.step(self.state, action, self.task.goal)
        self.state = outcome.state
        reward, won, text = 0.0, False, outcome.text
        if outcome.bought:
            result = self.shop_task.reward(self.shop.catalogue[self.state.product], self.state.chosen)
            reward, won = result.total, result.perfect
            text = self.shop.render(self.state, self.task.goal, score=reward)
        truncated = self._settle(won=won, score=reward, ended=outcome.bought)
        return self._shop_observation(text, reward=reward, truncated=truncated, valid=outcome.valid)


class WebShopBackend(base.Backend):
    """The synthetic shop. Options are ShopConfig fields (strings accepted)."""

    name = NAME

    def __init__(self, config: ShopConfig | None = None, **options: Any):
        self.config = config_or_options(config, options, config_from_options, "a ShopConfig")
        self.shop = shop_for(self.config.products, self.config.seed)
        self.goals = GoalSet(self.shop.catalogue, self.config)
        self._tasks: OrderedDict[str, ShopTask] = OrderedDict()
        self._lock = threading.Lock()

    # --- tasks ---------------------------------------------------------------------------------------

    def spec(self) -> base.EnvironmentSpec:
        return base.EnvironmentSpec(
            name=NAME,
            description=f"Synthetic WebShop: {self.config.products} seeded products, BM25 search, WebShop's pages, "
                        "actions and reward (search[...] / click[...]).",
            splits=SPLITS, action_space=base.TEMPLATED, default_horizon=self.config.horizon, version=ENGINE,
            task_types=CATEGORIES, experts=experts.EXPERTS,
        )

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            sizes = ", ".join(f"{s} ({self.config.split_size(s)} tasks)" for s in SPLITS)
            raise NotFound(f"unknown split {split[:64]!r} of {NAME}; valid splits: {sizes}")

    def num_tasks(self, split: str) -> int:
        self._check_split(split)
        return self.config.split_size(split)

    def shop_task(self, task_id: str) -> ShopTask:
        """The task (goal and its cached gold products) of an id; NotFound for anything else."""
        if not isinstance(task_id, str):
            raise InvalidArgument("task ids are strings")
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                self._tasks.move_to_end(task_id)
                return task
        parsed = parse_task_id(task_id)
        if parsed is None or not 0 <= parsed[1] < self.config.split_size(parsed[0]):
            ranges = ", ".join(f"{task_id_of(s, 0)}..{task_id_of(s, self.config.split_size(s) - 1)}" for s in SPLITS)
            raise NotFound(f"unknown task {task_id[:64]!r} of {NAME}; valid task ids: {ranges}")
        task = ShopTask(self.shop, self.goals.goal(*parsed))
        with self._lock:
            self._tasks[task_id] = task
            while len(self._tasks) > 4096:
                self._tasks.popitem(last=False)
        return task

    @staticmethod
    def _summary(task: ShopTask) -> base.TaskSummary:
        goal = task.goal
        return base.TaskSummary(goal.task_id, goal.split, goal.instruction_text, goal.category)

    def task(self, task_id: str) -> base.TaskSummary:
        return self._summary(self.shop_task(task_id))

    def list_tasks(self, split: str, offset: int, limit: int) -> list[base.TaskSummary]:
        size = self.num_tasks(split)
        return [self._summary(self.shop_task(task_id_of(split, i)))
                for i in range(max(0, offset), min(size, max(0, offset) + max(0, limit)))]

    def start(self, task_id: str, horizon: int) -> WebShopEpisode:
        task = self.shop_task(task_id)
        return WebShopEpisode(task, self._summary(task), horizon or self.config.horizon)

    # --- privileged side -----------------------------------------------------------------------------

    def replay(self, task_id: str, actions: Sequence[str]) -> tuple[ShopTask, State, frozenset[int]]:
        """The state after `actions` and the products opened on the way."""
        task = self.shop_task(task_id)
        state, opened = experts.opened_products(self.shop, actions, task.goal.instruction_text)
        return task, state, opened

    @staticmethod
    def _earned(task: ShopTask, state: State) -> tuple[float, bool]:
        """(reward, won) of the replayed history: its purchase's reward, (0, False) before a purchase."""
        if state.page != DONE:
            return 0.0, False
        result = task.reward(task.shop.catalogue[state.product], state.chosen)
        return result.total, result.perfect

    def privileged_state(self, task_id: str, actions: Sequence[str]) -> base.PrivilegedInfo:
        task, state, _ = self.replay(task_id, actions)
        goal = task.goal
        catalogue = self.shop.catalogue
        plan = experts.Planner(task).plan(state)
        target = self._target(task, state, plan)
        earned, won = self._earned(task, state)

        secrets: list[str] = []
        unseen = [index for index in task.gold if index not in state.seen]
        secrets.extend(catalogue[index].asin for index in unseen)
        secrets.extend(catalogue[index].title for index in unseen)
        instruction = goal.instruction_text
        for phrase in list(goal.attributes) + [v for _, v in goal.goal_options]:
            if not _whole_word(phrase, instruction) and phrase not in secrets:
                secrets.append(phrase)

        facts = [f"the goal asks for a {catalogue[target].ptype.name if target >= 0 else 'product'} with "
                 f"attributes: {', '.join(goal.attributes) or 'none'}",
                 "the goal's options: " + (", ".join(f"{n}: {v}" for n, v in goal.goal_options) or "none"),
                 f"the price must be at most {goal.price_upper:.2f} dollars",
                 f"{len(task.gold)} products earn reward 1"]
        for index in task.gold[:5]:
            # By id only: a fact starting with the id makes it a secret that leaks when named (the
            # teacher's leak rules), and titles stay out of facts so that they leak when named too.
            p = catalogue[index]
            options = ", ".join(f"{n}: {v}" for n, v in task.best_choice(p)) or "no options"
            facts.append(f"{p.asin} earns full reward with {options} at {p.price_text}")
        extra = {"engine": ENGINE, "replayed_actions": str(len(actions)), "optimal_length": str(len(plan)),
                 "satisfying_products": str(len(task.gold)), "page": state.page,
                 "earned_reward": f"{earned:.4f}", "won": str(won).lower()}
        essential: tuple[str, ...] = ()
        if target >= 0:
            p = catalogue[target]
            extra.update(target_asin=p.asin, target_title=p.title, target_price=f"{p.price:.2f}",
                         target_options=json.dumps(dict(task.best_choice(p)), sort_keys=True))
            essential = (p.asin,)
        return base.PrivilegedInfo(task=self._summary(task), essential_objects=essential,
                                   optimal_actions=tuple(plan), facts=tuple(facts), secrets=tuple(secrets),
                                   goal_record_json=goal.to_json(), extra=extra)

    def _target(self, task: ShopTask, state: State, plan: Sequence[str]) -> int:
        """The product the planner buys (or is buying), else the goal's source product."""
        product = state.product if state.page in ("item", "sub") else -1
        for action in plan:
            if action.startswith("click["):
                found = self.shop.catalogue.find(action[6:-1])
                if found is not None:
                    product = found.index
        if product >= 0 and task.satisfies(product):
            return product
        source = self.shop.catalogue.find(task.goal.asin)
        return source.index if source is not None else -1

    def expert_advice(self, task_id: str, actions: Sequence[str], expert: str) -> base.ExpertAdvice:
        self._check_expert(expert)
        task, state, opened = self.replay(task_id, actions)
        if state.page == DONE:
            return base.ExpertAdvice("", (), True, "")
        if expert == experts.PLANNER:
            advice = experts.Planner(task).advise(state)
            return base.ExpertAdvice(advice.next_action, advice.plan, False, advice.rationale)
        searcher = experts.Searcher(task)
        advice = searcher.advise(state, opened)
        plan = experts.searcher_plan(task, state, opened, self.config.horizon)
        return base.ExpertAdvice(advice.next_action, plan, False, advice.rationale)

    def demonstration(self, task_id: str, expert: str, horizon: int) -> base.Demonstration:
        self._check_expert(expert)
        episode = self.start(task_id, horizon)
        task = episode.shop_task
        obs = episode.reset()
        steps: list[base.DemoStep] = []
        planner = experts.Planner(task)
        searcher = experts.Searcher(task)
        opened: frozenset[int] = frozenset()
        while not obs.done:
            advice = planner.advise(episode.state) if expert == experts.PLANNER else searcher.advise(episode.state,
                                                                                                     opened)
            if not advice.next_action:
                break
            nxt = episode.step(advice.next_action)
            if episode.state.page == "item":
                opened = opened | {episode.state.product}
            steps.append(base.DemoStep(obs.text, obs.candidates, advice.next_action, advice.rationale, nxt.reward,
                                       nxt.last_action_valid, nxt.text))
            obs = nxt
        return base.Demonstration(
            task=episode.task, expert=expert, steps=tuple(steps), done=obs.done, won=episode.won,
            score=episode.score, truncated=obs.truncated,
            metadata={"engine": ENGINE, "expert": expert, "horizon": str(episode.horizon), "task_id": task_id},
        )

    @staticmethod
    def _check_expert(expert: str) -> None:
        if expert not in experts.EXPERTS:
            raise InvalidArgument(f"unknown expert {expert[:40]!r}; valid experts: {', '.join(experts.EXPERTS)}")
