"""The web shop itself: pages, what can be clicked on them, transitions and the text the agent reads.

Pages and buttons follow WebShop's site (web_agent_site) and its text environment:

- search page: the instruction and a search box; `search[<query>]` runs a search (the only page with
  a search box, as in WebShop);
- results page: "Page 2 (Total results: 50)", up to 10 products (asin, title, price) out of the top
  50, `back to search`, `< prev` (from page 2 on) and `next >` (while more results follow);
- item page: options to choose (clicking a value selects it; a chosen value is shown [[like this]]),
  title, price, rating, `description`, `features`, `reviews`, `buy now`, `back to search`, `< prev`
  (back to the results page it came from);
- description / features / reviews pages: the text, `back to search`, `< prev` (back to the item);
- done page: after `buy now`, with the score. The episode is over.

Actions are `search[...]` and `click[...]`, matched as WebShop does: the argument is lower-cased and
a click must name a clickable of the current page (button texts, product ids, option values, all
lower case as WebShop's `get_available_actions` lists them). Anything else is an invalid action: the
state does not change and the text says why (WebShop silently does nothing).

The texts are WebShop's pages rendered as in ReAct / LEAP's WebShop prompts: clickables in [brackets],
one element per line; the instruction is shown on the search page only (the agent also has it as its
goal). The state is an immutable value, so replaying a list of actions is a fold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from services.environment.backends.webshop.catalogue import Catalogue, Product
from services.environment.backends.webshop.search import PAGE_SIZE, SearchEngine

SEARCH, RESULTS, ITEM, SUB, DONE = "search", "results", "item", "sub", "done"
BACK_TO_SEARCH = "back to search"
NEXT_PAGE = "next >"
PREV_PAGE = "< prev"
BUY_NOW = "buy now"
SUB_PAGES = ("description", "features", "reviews")
BUTTON_LABELS = {BACK_TO_SEARCH: "Back to Search", NEXT_PAGE: "Next >", PREV_PAGE: "< Prev", BUY_NOW: "Buy Now",
                 "description": "Description", "features": "Features", "reviews": "Reviews"}
SEARCH_TEMPLATE = "search[<query>]"

_ACTION_RE = re.compile(r"\s*(search|click)\s*\[(.*)\]\s*", re.IGNORECASE | re.DOTALL)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class State:
    """Where the agent is. `seen` holds the products listed or opened so far (what it has observed)."""

    page: str = SEARCH
    query: str = ""
    results: tuple[int, ...] = ()
    page_no: int = 1
    product: int = -1
    chosen: tuple[tuple[str, str], ...] = ()
    sub: str = ""
    bought: bool = False
    seen: frozenset[int] = field(default_factory=frozenset)

    def chosen_dict(self) -> dict[str, str]:
        return dict(self.chosen)

    def page_products(self) -> tuple[int, ...]:
        start = (self.page_no - 1) * PAGE_SIZE
        return self.results[start:start + PAGE_SIZE]


@dataclass(frozen=True)
class Outcome:
    state: State
    text: str
    valid: bool
    bought: bool = False  # this action was `buy now`


def parse_action(action: str) -> tuple[str, str] | None:
    """("search"|"click", argument) with the argument lower-cased and its spaces collapsed; None when the
    action is neither form (or its argument is empty)."""
    match = _ACTION_RE.fullmatch(action)
    if match is None:
        return None
    argument = _SPACES.sub(" ", match.group(2)).strip().lower()
    if not argument:
        return None
    return match.group(1).lower(), argument


class Shop:
    """The site over one catalogue and one search engine (shared by every episode; stateless)."""

    def __init__(self, catalogue: Catalogue, engine: SearchEngine):
        self.catalogue = catalogue
        self.engine = engine

    # --- what can be clicked ----------------------------------------------------------------------

    def clickables(self, state: State) -> list[str]:
        """The clickables of the page, lower case, in page order (WebShop's available actions)."""
        if state.page == RESULTS:
            items = [BACK_TO_SEARCH]
            if state.page_no > 1:
                items.append(PREV_PAGE)
            if state.page_no * PAGE_SIZE < len(state.results):
                items.append(NEXT_PAGE)
            items.extend(self.catalogue[i].asin.lower() for i in state.page_products())
            return items
        if state.page == ITEM:
            product = self.catalogue[state.product]
            items = [BACK_TO_SEARCH, PREV_PAGE]
            for _, values in product.options:
                items.extend(values)
            items.extend(SUB_PAGES)
            items.append(BUY_NOW)
            return items
        if state.page == SUB:
            return [BACK_TO_SEARCH, PREV_PAGE]
        return []

    def has_search_box(self, state: State) -> bool:
        return state.page == SEARCH

    def candidates(self, state: State) -> tuple[str, ...]:
        return tuple(f"click[{c}]" for c in self.clickables(state))

    def templates(self, state: State) -> tuple[str, ...]:
        return (SEARCH_TEMPLATE,) if self.has_search_box(state) else ()

    # --- transitions --------------------------------------------------------------------------------

    def search(self, query: str) -> tuple[int, ...]:
        return self.engine.search(query)

    def step(self, state: State, action: str, instruction: str) -> Outcome:
        """Apply one action; invalid actions leave the state as it is."""
        if state.page == DONE:
            return Outcome(state, self._invalid("the episode is over", state, instruction), False)
        parsed = parse_action(action)
        if parsed is None:
            return Outcome(state, self._invalid("an action is search[<query>] or click[<button>]", state,
                                                instruction), False)
        kind, argument = parsed
        if kind == "search":
            if not self.has_search_box(state):
                return Outcome(state, self._invalid("there is no search box on this page (click back to "
                                                    "search first)", state, instruction), False)
            results = self.search(argument)
            new = State(page=RESULTS, query=argument, results=results, page_no=1,
                        seen=state.seen | frozenset(results[:PAGE_SIZE]))
            return Outcome(new, self.render(new, instruction), True)
        if argument not in self.clickables(state):
            return Outcome(state, self._invalid("that is not a clickable of this page", state, instruction), False)
        new = self._click(state, argument)
        return Outcome(new, self.render(new, instruction), True, bought=new.bought and not state.bought)

    def _click(self, state: State, argument: str) -> State:
        if argument == BACK_TO_SEARCH:
            return State(seen=state.seen)
        if state.page == RESULTS:
            if argument in (NEXT_PAGE, PREV_PAGE):
                page_no = state.page_no + (1 if argument == NEXT_PAGE else -1)
                moved = replace(state, page_no=page_no)
                return replace(moved, seen=state.seen | frozenset(moved.page_products()))
            product = self.catalogue.find(argument)
            assert product is not None  # a listed asin
            return replace(state, page=ITEM, product=product.index, chosen=(), seen=state.seen | {product.index})
        if state.page == ITEM:
            if argument == PREV_PAGE:
                return replace(state, page=RESULTS, product=-1, chosen=())
            if argument in SUB_PAGES:
                return replace(state, page=SUB, sub=argument)
            if argument == BUY_NOW:
                return replace(state, page=DONE, bought=True)
            product = self.catalogue[state.product]
            name = product.option_values()[argument]
            chosen = dict(state.chosen)
            chosen[name] = argument
            order = [n for n, _ in product.options]
            return replace(state, chosen=tuple(sorted(chosen.items(), key=lambda kv: order.index(kv[0]))))
        if state.page == SUB and argument == PREV_PAGE:
            return replace(state, page=ITEM, sub="")
        raise AssertionError(f"unhandled click {argument!r} on {state.page}")  # clickables() rules this out

    def replay(self, actions: Sequence[str], instruction: str,
               on_step: Callable[[State, str, Outcome], None] | None = None) -> State:
        """The state after `actions` from the search page (invalid actions change nothing)."""
        state = State()
        for action in actions:
            outcome = self.step(state, action, instruction)
            if on_step is not None:
                on_step(state, action, outcome)
            state = outcome.state
        return state

    # --- texts ---------------------------------------------------------------------------------------

    def _invalid(self, why: str, state: State, instruction: str) -> str:
        return f"Invalid action: {why}. The page is unchanged.\n\n" + self.render(state, instruction)

    def render(self, state: State, instruction: str, score: float | None = None) -> str:
        """The page as the agent reads it."""
        if state.page == SEARCH:
            return f"WebShop\nInstruction:\n{instruction}\n[Search]"
        if state.page == RESULTS:
            total = len(state.results)
            lines = ["[Back to Search]", f"Page {state.page_no} (Total results: {total})"]
            if state.page_no > 1:
                lines.append("[< Prev]")
            if state.page_no * PAGE_SIZE < total:
                lines.append("[Next >]")
            for i in state.page_products():
                p = self.catalogue[i]
                lines += [f"[{p.asin}]", p.title, p.price_text]
            if not total:
                lines.append("No products match your search.")
            return "\n".join(lines)
        product = self.catalogue[state.product] if state.product >= 0 else None
        if state.page == ITEM and product is not None:
            chosen = set(state.chosen_dict().values())
            lines = ["[Back to Search]", "[< Prev]"]
            for name, values in product.options:
                lines.append(name + " " + "".join(f"[[{v}]]" if v in chosen else f"[{v}]" for v in values))
            lines += [product.title, f"Price: {product.price_text}", f"Rating: {product.rating:.1f}",
                      "[Description]", "[Features]", "[Reviews]", "[Buy Now]"]
            return "\n".join(lines)
        if state.page == SUB and product is not None:
            lines = ["[Back to Search]", "[< Prev]"]
            if state.sub == "description":
                lines.append(product.description)
            elif state.sub == "features":
                lines.extend(product.bullets)
            else:
                lines.extend(f"{stars} stars: {text}" for stars, text in product.reviews)
                if not product.reviews:
                    lines.append("No reviews yet.")
            return "\n".join(lines)
        if state.page == DONE:
            text = "Thank you for shopping with us!"
            if score is not None:
                text += f"\nYour score (min 0.0, max 1.0): {score:.2f}"
            return text
        raise AssertionError(f"unknown page {state.page!r}")

    def product_of(self, state: State) -> Product | None:
        return self.catalogue[state.product] if state.product >= 0 else None
