"""WebShop's reward (Yao et al. 2022, section 3.1), written from the paper and its public code's rules.

For a goal with attributes U_att, options U_opt and price bound u_price, and a bought product y with
its attributes Y_att, the options chosen on its page Y_opt and its price y_price:

    r = r_type * (|U_att ∩ Y_att| + |U_opt ∩ Y_opt| + 1[y_price <= u_price]) / (|U_att| + |U_opt| + 1)

The intersections are fuzzy, as in WebShop:

- an attribute of the goal is matched when one of the product's attributes has a token-set ratio
  above 85 with it (thefuzz's `token_set_ratio`, rounded to an integer, lower-cased and punctuation
  stripped; computed with rapidfuzz), or else when the goal attribute occurs verbatim in the
  product's title, features or description;
- an option of the goal is matched when one chosen option matches it: exactly when the chosen
  option's name is "size" (WebShop's EXACT_MATCH_OPTS), else by token-set ratio above 85; both values
  are first color-normalized (the first of WebShop's 104 color words found inside the value).
  Each chosen option matches at most one goal option, so the count never exceeds |U_opt| (the paper's
  set intersection; the public code counted per chosen option, with a text fallback on the chosen
  value, which can exceed |U_opt| and reward a wrong choice; we follow the paper there).

r_type is WebShop's text-matching heuristic for "is it even the same kind of product":
query_match (both were found under the same search query), category_match (their breadcrumbs share
at least two levels), title_score (the share of the goal product's title nouns, counted with
repeats, that the bought product's title also has; 0.2 when the goal title has no nouns). Then
r_type = 1 when (query_match or category_match or title_score > 0.2), else 0.5; 0.1 when
title_score < 0.1; 0 when title_score == 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

# WebShop's threshold for a fuzzy match and its exactly matched option names.
FUZZY_THRESHOLD = 85
EXACT_MATCH_OPTIONS = ("size",)

# WebShop's normalize.py COLOR_SET, in its order (the first color found inside a value wins).
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream", "crystal",
    "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape", "graphite",
    "grass", "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender", "lemon",
    "leopard", "light", "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha",
    "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink",
    "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver",
    "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal", "tiger", "turquoise",
    "violet", "walnut", "wheat", "white", "wine", "yellow",
)


def normalize_color(value: str) -> str:
    """The first color word found inside `value`, or `value` itself (WebShop's normalize_color)."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def token_set_ratio(a: str, b: str) -> int:
    """thefuzz's token_set_ratio: lower-cased, punctuation stripped, rounded; 0 when either is empty."""
    a, b = default_process(a), default_process(b)
    if not a or not b:
        return 0
    return int(round(fuzz.token_set_ratio(a, b)))


def fuzzy_match(a: str, b: str) -> bool:
    return token_set_ratio(a, b) > FUZZY_THRESHOLD


@dataclass(frozen=True)
class Goal:
    """The goal record fields the reward reads (WebShop's goal dict)."""

    query: str
    product_category: str
    name: str                      # the goal product's title
    attributes: tuple[str, ...]
    options: tuple[str, ...]       # goal option values (their names do not matter to the reward)
    price_upper: float


@dataclass(frozen=True)
class Bought:
    """What the reward reads of a bought product, and the options chosen on its page."""

    query: str
    product_category: str
    title: str
    title_nouns: tuple[str, ...]
    attributes: tuple[str, ...]
    bullets: tuple[str, ...]
    description: str
    price: float
    chosen: tuple[tuple[str, str], ...]  # (option name, value)


@dataclass(frozen=True)
class Reward:
    """The reward and its parts (WebShop's verbose reward info)."""

    total: float
    r_type: float
    query_match: bool
    category_match: bool
    title_score: float
    attribute_matches: int
    option_matches: int
    price_ok: bool
    n_attributes: int
    n_options: int

    @property
    def perfect(self) -> bool:
        """Whether every part is met (r = 1 exactly, without float comparison)."""
        return (self.r_type == 1.0 and self.price_ok and self.attribute_matches == self.n_attributes
                and self.option_matches == self.n_options)

    @property
    def r_att(self) -> float:
        return self.attribute_matches / self.n_attributes if self.n_attributes else 0.0

    @property
    def r_option(self) -> float | None:
        return self.option_matches / self.n_options if self.n_options else None


def type_reward(goal_query: str, goal_category: str, goal_nouns: Sequence[str], query: str, category: str,
                nouns: Iterable[str]) -> tuple[float, bool, bool, float]:
    """(r_type, query_match, category_match, title_score) as WebShop's get_type_reward."""
    query_match = query == goal_query
    levels = {x.strip() for x in category.split("›")}
    goal_levels = {x.strip() for x in goal_category.split("›")}
    category_match = len(levels & goal_levels) >= 2
    if not goal_nouns:
        title_score = 0.2
    else:
        title_score = len(set(nouns) & set(goal_nouns)) / len(goal_nouns)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, query_match, category_match, title_score


def attribute_matches(goal_attributes: Sequence[str], attributes: Sequence[str], title: str,
                      bullets: Sequence[str], description: str) -> int:
    """How many goal attributes the product has (fuzzy on its attributes, else verbatim in its text)."""
    title_l, bullets_l, description_l = title.lower(), " ".join(bullets).lower(), description.lower()
    count = 0
    for g in goal_attributes:
        if any(fuzzy_match(p, g) for p in attributes) or g in title_l or g in bullets_l or g in description_l:
            count += 1
    return count


def option_pair_matches(name: str, chosen_value: str, goal_value: str) -> bool:
    """Whether one chosen option (name, value) satisfies one goal option value."""
    chosen, wanted = normalize_color(chosen_value), normalize_color(goal_value)
    if name.lower() in EXACT_MATCH_OPTIONS:
        return chosen == wanted
    return fuzzy_match(wanted, chosen)


def option_matches(goal_options: Sequence[str], chosen: Sequence[tuple[str, str]]) -> int:
    """|U_opt ∩ Y_opt|: goal options matched by distinct chosen options (a greedy matching in goal order;
    with our data every goal value has at most one matching chosen value, so greedy is exact)."""
    used: set[int] = set()
    count = 0
    for g in goal_options:
        for i, (name, value) in enumerate(chosen):
            if i not in used and option_pair_matches(name, value, g):
                used.add(i)
                count += 1
                break
    return count


def compute(goal: Goal, goal_nouns: Sequence[str], bought: Bought) -> Reward:
    """The reward of buying `bought` for `goal`."""
    r_type, qm, cm, ts = type_reward(goal.query, goal.product_category, goal_nouns, bought.query,
                                     bought.product_category, bought.title_nouns)
    n_att = attribute_matches(goal.attributes, bought.attributes, bought.title, bought.bullets, bought.description)
    n_opt = option_matches(goal.options, bought.chosen)
    price_ok = bought.price <= goal.price_upper
    total = (n_att + n_opt + int(price_ok)) / (len(goal.attributes) + len(goal.options) + 1) * r_type
    return Reward(total=total, r_type=r_type, query_match=qm, category_match=cm, title_score=ts,
                  attribute_matches=n_att, option_matches=n_opt, price_ok=price_ok,
                  n_attributes=len(goal.attributes), n_options=len(goal.options))


def best_choice(goal_options: Sequence[str], product_options: Sequence[tuple[str, Sequence[str]]],
                ) -> tuple[tuple[str, str], ...]:
    """Options to choose on a product page so that as many goal options as possible match: for each
    goal option, the first value of a not yet used option kind that matches it."""
    chosen: list[tuple[str, str]] = []
    used: set[str] = set()
    for g in goal_options:
        for name, values in product_options:
            if name in used:
                continue
            value = next((v for v in values if option_pair_matches(name, v, g)), None)
            if value is not None:
                chosen.append((name, value))
                used.add(name)
                break
    return tuple(chosen)


def parse_price_upper(instruction: str) -> float | None:
    """The bound of "..., and price lower than 40.00 dollars" (None when the instruction has none)."""
    marker = "price lower than "
    at = instruction.rfind(marker)
    if at < 0:
        return None
    number = instruction[at + len(marker):].split(" ", 1)[0]
    try:
        return float(number)
    except ValueError:
        return None


def without_price(instruction: str) -> str:
    """The instruction without its ", and price lower than X dollars" clause."""
    at = instruction.rfind(", and price lower than ")
    return instruction[:at] if at >= 0 else instruction


def price_clause(price_upper: float) -> str:
    return f", and price lower than {price_upper:.2f} dollars"


__all__ = ["Bought", "COLOR_SET", "Goal", "Reward", "attribute_matches", "best_choice", "compute",
           "fuzzy_match", "normalize_color", "option_matches", "option_pair_matches", "parse_price_upper",
           "price_clause", "token_set_ratio", "type_reward", "without_price"]

