"""The shop's experts: a privileged planner and a searcher that sees only what the agent sees.

- planner (privileged): knows the goal record and so which products earn reward 1. From any state it
  takes the shortest of: finishing on the item page it is on (choose the goal's options, buy), going
  back to the results it came from when one of its pages lists a satisfying product, or searching
  anew: first with the instruction's key words, then (when those results list no satisfying product)
  with the name of a satisfying product, which it can only know from the goal record. Then it opens
  the product, selects the goal's options and buys. Its plan from the replayed state is
  PrivilegedInfo.optimal_actions.
- searcher (no goal record): searches with the instruction's text, opens the listed product whose
  title shares the most words with the instruction among those within the price bound it read in the
  instruction (looking at up to three result pages, never reopening a product), goes back when the
  opened product costs too much, selects every option value the instruction names, and buys. It reads
  only page texts: titles, prices, option values.

Rationales are written as the agent's own thought and never name a product id, nor anything the
instruction and the pages seen so far do not show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from services.environment.backends.webshop import reward as rw
from services.environment.backends.webshop.search import PAGE_SIZE
from services.environment.backends.webshop.shop import (
    BACK_TO_SEARCH,
    BUY_NOW,
    DONE,
    ITEM,
    NEXT_PAGE,
    PREV_PAGE,
    RESULTS,
    SEARCH,
    SUB,
    State,
)
from services.environment.backends.webshop.task import ShopTask

PLANNER = "planner"
SEARCHER = "searcher"
EXPERTS = (PLANNER, SEARCHER)

# The searcher looks at this many result pages before settling for the best it saw.
SEARCHER_PAGES = 3
# A title sharing this share of the instruction's words is good enough to open at once.
SEARCHER_GOOD_ENOUGH = 0.6

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
# Words of instructions that carry no product information (openers, articles, linking words).
FILLER = frozenset("""i i'm im need want am looking for find me would like look to buy get a an some that is which
that's with has having in of and color size flavor scent""".split())


def keyword_query(instruction: str) -> str:
    """The instruction's key words: no price clause, no openers or linking words."""
    words = _WORD.findall(rw.without_price(instruction).lower())
    return " ".join(w for w in words if w not in FILLER)


def searcher_query(instruction: str) -> str:
    """What the searcher types: the instruction as written, without the price clause."""
    return rw.without_price(instruction).strip()


@dataclass(frozen=True)
class Advice:
    next_action: str
    plan: tuple[str, ...]
    rationale: str


def _click(x: str) -> str:
    return f"click[{x}]"


# --- planner -----------------------------------------------------------------------------------------

class Planner:
    """Shortest action sequences to a reward-1 purchase, from any state (privileged)."""

    def __init__(self, task: ShopTask):
        self.task = task
        self.shop = task.shop

    def _finish(self, state: State) -> list[str] | None:
        """Options then buy, on the item page of a satisfying product; None when it does not satisfy."""
        if not self.task.satisfies(state.product):
            return None
        product = self.shop.catalogue[state.product]
        chosen = state.chosen_dict()
        clicks = [_click(v) for n, v in self.task.best_choice(product) if chosen.get(n) != v]
        return clicks + [_click(BUY_NOW)]

    def _in_results(self, results: Sequence[int], page_no: int) -> list[str] | None:
        """From page `page_no` of `results`: move to the first page listing a satisfying product, open it,
        finish. None when no page lists one."""
        for position, index in enumerate(results):
            if self.task.satisfies(index):
                target_page = position // PAGE_SIZE + 1
                moves = target_page - page_no
                nav = [_click(NEXT_PAGE)] * moves if moves > 0 else [_click(PREV_PAGE)] * (-moves)
                product = self.shop.catalogue[index]
                options = [_click(v) for _, v in self.task.best_choice(product)]
                return nav + [_click(product.asin.lower())] + options + [_click(BUY_NOW)]
        return None

    def queries(self) -> list[str]:
        """The searches the planner considers, in order of preference."""
        queries = [keyword_query(self.task.goal.instruction_text)]
        gold = self.task.gold
        if gold:
            # A satisfying product's name: the goal's own product when it qualifies, else the first.
            source = self.shop.catalogue.find(self.task.goal.asin)
            pick = source.index if source is not None and source.index in self.task.gold_set else gold[0]
            queries.append(self.shop.catalogue[pick].title.lower())
        return queries

    def _from_search(self) -> list[str]:
        for query in self.queries():
            rest = self._in_results(self.shop.search(query), 1)
            if rest is not None:
                return [f"search[{query}]"] + rest
        # No satisfying product exists (cannot happen for generated goals: the source satisfies its
        # goal); buy the best purchase the key-word search offers so the plan still ends.
        query = self.queries()[0]
        results = self.shop.search(query)
        if not results:
            return [f"search[{query}]"]
        catalogue = self.shop.catalogue
        best = max(results[:PAGE_SIZE], key=lambda i: self.task.reward(catalogue[i],
                                                                        self.task.best_choice(catalogue[i])).total)
        product = catalogue[best]
        return ([f"search[{query}]", _click(product.asin.lower())]
                + [_click(v) for _, v in self.task.best_choice(product)] + [_click(BUY_NOW)])

    def plan(self, state: State) -> list[str]:
        if state.page == DONE:
            return []
        if state.page == SEARCH:
            return self._from_search()
        restart = [_click(BACK_TO_SEARCH)] + self._from_search()
        if state.page == RESULTS:
            here = self._in_results(state.results, state.page_no)
            return here if here is not None and len(here) <= len(restart) else restart
        if state.page == SUB:
            return [_click(PREV_PAGE)] + self.plan(State(page=ITEM, query=state.query, results=state.results,
                                                         page_no=state.page_no, product=state.product,
                                                         chosen=state.chosen, seen=state.seen))
        # Item page.
        options = [restart]
        finish = self._finish(state)
        if finish is not None:
            options.insert(0, finish)
        back = self._in_results(state.results, state.page_no)
        if back is not None:
            options.insert(1 if finish is not None else 0, [_click(PREV_PAGE)] + back)
        return min(options, key=len)  # the first of the shortest

    def advise(self, state: State) -> Advice:
        plan = self.plan(state)
        if not plan:
            return Advice("", (), "")
        return Advice(plan[0], tuple(plan), self.rationale(state, plan))

    def rationale(self, state: State, plan: list[str]) -> str:
        action = plan[0]
        goal = self.task.goal
        kind = self.shop.catalogue.find(goal.asin).ptype.name if self.shop.catalogue.find(goal.asin) else "product"
        if action.startswith("search["):
            if action[7:-1] == keyword_query(goal.instruction_text):
                return (f"The instruction asks for a {kind} with particular features, so I search for its key "
                        "words.")
            return ("A search with the instruction's words lists no product that has everything asked for, so I "
                    "search for a matching product by its name.")
        target = action[6:-1]
        if target == NEXT_PAGE:
            return "No product on this page has everything the instruction asks for, so I look at the next page."
        if target == PREV_PAGE:
            if state.page == SUB:
                return "I have read this page, so I go back to the product."
            if state.page == ITEM:
                return ("This product lacks something the instruction asks for, and the results list a better "
                        "one, so I go back to them.")
            return "A product that matches the instruction was listed on an earlier page, so I go back to it."
        if target == BACK_TO_SEARCH:
            return "None of these products has everything the instruction asks for, so I search again."
        if target == BUY_NOW:
            return "This product and the options I selected match every part of the instruction, so I buy it."
        if state.page == ITEM:  # an option value
            if re.search(r"(?<![\w])" + re.escape(target) + r"(?![\w])", goal.instruction_text):
                return f"The instruction asks for {target}, so I select that option."
            return "I select the option this product needs to match the instruction."
        # Opening a listed product.
        product = self.shop.catalogue.find(target)
        price = f" and costs {product.price_text}" if product is not None else ""
        return (f"This {kind} matches what the instruction asks for{price}, within the price limit, so I open "
                "it.")


# --- searcher ----------------------------------------------------------------------------------------

class Searcher:
    """Shops from the instruction and the pages alone (no goal record)."""

    def __init__(self, task: ShopTask):
        self.task = task
        self.shop = task.shop
        instruction = task.goal.instruction_text
        self.instruction = instruction
        self.bound = rw.parse_price_upper(instruction)
        self.words = set(self.shop.engine.analyzer(keyword_query(instruction)))
        self.body = rw.without_price(instruction).lower()

    def _title_score(self, index: int) -> float:
        if not self.words:
            return 0.0
        title = set(self.shop.engine.analyzer(self.shop.catalogue[index].title))
        return len(self.words & title) / len(self.words)

    def _affordable(self, index: int) -> bool:
        return self.bound is None or self.shop.catalogue[index].price <= self.bound

    def _named(self, value: str) -> bool:
        return re.search(r"(?<![\w])" + re.escape(value) + r"(?![\w])", self.body) is not None

    def advise(self, state: State, opened: frozenset[int]) -> Advice:
        """The next action (and why) given the state and the products already opened."""
        if state.page == DONE:
            return Advice("", (), "")
        if state.page == SEARCH:
            return Advice(f"search[{searcher_query(self.instruction)}]", (),
                          "I search for what the instruction describes.")
        if state.page == SUB:
            return Advice(_click(PREV_PAGE), (), "I have read this page, so I go back to the product.")
        if state.page == ITEM:
            product = self.shop.catalogue[state.product]
            if not self._affordable(state.product):
                return Advice(_click(PREV_PAGE), (), "This product costs more than the instruction allows, so I "
                                                     "go back to the results.")
            chosen = state.chosen_dict()
            for name, values in product.options:
                wanted = [v for v in values if self._named(v)]
                if wanted and chosen.get(name) not in wanted:
                    return Advice(_click(wanted[0]), (), f"The instruction asks for {wanted[0]}, so I select it.")
            return Advice(_click(BUY_NOW), (), "The product fits the instruction and I selected the options it "
                                               "names, so I buy it.")
        # Results page.
        listed = [i for i in state.page_products() if i not in opened]
        scored = sorted(listed, key=lambda i: (-self._affordable(i), -self._title_score(i), state.results.index(i)))
        more = state.page_no * PAGE_SIZE < len(state.results)
        if scored and self._affordable(scored[0]) and (self._title_score(scored[0]) >= SEARCHER_GOOD_ENOUGH
                                                       or not more or state.page_no >= SEARCHER_PAGES):
            product = self.shop.catalogue[scored[0]]
            return Advice(_click(product.asin.lower()), (),
                          f"This product's title matches the instruction best and it costs {product.price_text}, "
                          "within the price limit, so I open it.")
        if more and state.page_no < SEARCHER_PAGES:
            return Advice(_click(NEXT_PAGE), (), "No product on this page matches the instruction well enough, so "
                                                 "I look at the next page.")
        if scored:
            product = self.shop.catalogue[scored[0]]
            return Advice(_click(product.asin.lower()), (),
                          "This is the closest match to the instruction among the results, so I open it.")
        return Advice(_click(BACK_TO_SEARCH), (), "I have looked at every product listed, so I search again.")


def opened_products(shop, actions: Sequence[str], instruction: str) -> tuple[State, frozenset[int]]:
    """The state after `actions` and the products whose pages were opened on the way."""
    opened: set[int] = set()

    def note(_before, _action, outcome):
        if outcome.valid and outcome.state.page == ITEM:
            opened.add(outcome.state.product)

    state = shop.replay(actions, instruction, note)
    return state, frozenset(opened)


def searcher_plan(task: ShopTask, state: State, opened: frozenset[int], limit: int) -> tuple[str, ...]:
    """The searcher's own continuation from a state, up to `limit` actions."""
    searcher = Searcher(task)
    plan: list[str] = []
    shop = task.shop
    while len(plan) < limit and state.page != DONE:
        action = searcher.advise(state, opened).next_action
        if not action:
            break
        plan.append(action)
        outcome = shop.step(state, action, task.goal.instruction_text)
        state = outcome.state
        if state.page == ITEM:
            opened = opened | {state.product}
    return tuple(plan)
