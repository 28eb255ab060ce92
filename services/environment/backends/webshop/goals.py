"""Goal records, their instructions in WebShop's phrasing, the splits and the task ids.

A goal is drawn from a source product, as WebShop's goals are: 1-3 of its attributes, a value for
some of its option kinds, and a price bound above its price by WebShop's rule (the larger of two
draws among the first four multiples of 10 above the price). The instruction says all of it, in
lower case as WebShop's crowd-sourced instructions are, ending with ", and price lower than 40.00
dollars":

    i need a natural looking hair extension in black color, and price lower than 40.00 dollars

Every attribute and option value of the goal is written verbatim in the instruction (a test checks
it), so a reward of 1 is within reach of an agent that reads; what stays hidden is which products
satisfy the goal.

Splits: `train`, `valid_seen` and `valid_unseen`, with disjoint source products. Product types are
ranked by sha256 of their name within each category, and the first `unseen_fraction` of each
category's types (at least one) are held out: `valid_unseen` asks only for those types, `train` and
`valid_seen` never do (the held-out products are still in the shop, as distractors). Products of the
other types are assigned to train / valid_seen by sha256 of their asin (90 % / 10 %).

Task ids: "<split>-<index>" with the index written in ASCII digits ("train-00042"); parsing is
strict (no signs, no spaces, no other digit scripts, at most 9 digits).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from functools import cached_property

from services.environment.backends.webshop import data
from services.environment.backends.webshop.catalogue import Catalogue, Product, derive_seed, title_nouns
from services.environment.backends.webshop.data import ADJ
from services.environment.backends.webshop.reward import Goal, price_clause

SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")
DEFAULT_SPLIT_SIZES = {"train": 2000, "valid_seen": 500, "valid_unseen": 500}
MAX_SPLIT_SIZE = 1_000_000
MAX_PRODUCTS = 1_000_000
_TASK_ID_RE = re.compile(r"(train|valid_seen|valid_unseen)-([0-9]{1,9})", re.ASCII)

# WebShop's PRICE_RANGE: multiples of 10 up to 990.
PRICE_RANGE = tuple(10.0 * i for i in range(1, 100))
NO_PRICE_BOUND = 1_000_000.0


@dataclass(frozen=True)
class GoalRecord:
    """A WebShop goal record (field names as in WebShop's goal dicts, options with their names)."""

    task_id: str
    split: str
    index: int
    asin: str
    category: str
    query: str
    name: str
    product_category: str
    instruction_text: str
    attributes: tuple[str, ...]
    goal_options: tuple[tuple[str, str], ...]
    price_upper: float

    def reward_goal(self) -> Goal:
        return Goal(query=self.query, product_category=self.product_category, name=self.name,
                    attributes=self.attributes, options=tuple(v for _, v in self.goal_options),
                    price_upper=self.price_upper)

    @cached_property
    def name_nouns(self) -> tuple[str, ...]:
        return tuple(title_nouns(self.name))

    def to_json(self) -> str:
        record = {"asin": self.asin, "category": self.category, "query": self.query, "name": self.name,
                  "product_category": self.product_category, "instruction_text": self.instruction_text,
                  "attributes": list(self.attributes), "goal_options": dict(self.goal_options),
                  "price_upper": self.price_upper}
        return json.dumps(record, sort_keys=True)


def task_id_of(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


def parse_task_id(task_id: str) -> tuple[str, int] | None:
    """("train", 42) for "train-00042"; None for anything else (strictly ASCII, at most 9 digits)."""
    match = _TASK_ID_RE.fullmatch(task_id) if len(task_id) <= 32 else None
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def price_upper_for(price: float, rng: random.Random) -> float:
    """WebShop's price bound: the larger of two of the first four multiples of 10 above the price."""
    above = [p for p in PRICE_RANGE if p > price][:4]
    if len(above) < 2:
        return NO_PRICE_BOUND
    return sorted(rng.sample(above, 2))[1]


# --- instructions ------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _option_phrase(name: str, value: str, rng: random.Random) -> str:
    if name == "color":
        return rng.choice((f"in {value} color", f"in {value}", f"with color {value}"))
    if name == "size":
        return rng.choice((f"in size {value}", f"in {value} size", f"of size {value}"))
    if name == "flavor name":
        return rng.choice((f"in {value} flavor", f"with {value} flavor"))
    if name == "scent":
        return rng.choice((f"with {value} scent", f"in {value} scent"))
    return f"with {name} {value}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def instruction_for(ptype: data.ProductType, attributes: list[str], options: list[tuple[str, str]],
                    price_upper: float, rng: random.Random) -> str:
    """The instruction of a goal, in WebShop's lower-case crowd-worker style."""
    kinds = dict(ptype.attributes)
    kinds.update(data.COMMON_ATTRIBUTES[ptype.category])
    adjs = [a for a in attributes if kinds.get(a, ADJ) == ADJ]
    nouns = [a for a in attributes if kinds.get(a, ADJ) != ADJ]
    pre = []   # adjectives before the type name ("a gluten free protein bar")
    post = []  # phrases after it
    if adjs and rng.random() < 0.5:
        pre.append(adjs.pop(0))
    if adjs:
        post.append(rng.choice(("that is ", "which is ", "that's ")) + _join(adjs))
    if nouns:
        post.append(rng.choice(("with ", "that has ", "having ")) + _join(nouns))
    option_phrases = [_option_phrase(n, v, rng) for n, v in options]
    rng.shuffle(option_phrases)
    post[rng.randint(0, len(post)):0] = option_phrases  # options anywhere among the phrases
    head = " ".join(pre + [ptype.name])
    opener = data.OPENERS[rng.randrange(len(data.OPENERS))]
    article = "some" if ptype.mass else _article(head)
    text = f"{opener} {article} {head}"
    if post:
        text += " " + ", ".join(post) if rng.random() < 0.3 else " " + " ".join(post)
    text = re.sub(r"\s+", " ", text).strip()
    if price_upper < NO_PRICE_BOUND:
        text += price_clause(price_upper)
    return text


# --- configuration and splits ------------------------------------------------------------------------

@dataclass(frozen=True)
class ShopConfig:
    """Knobs of the synthetic shop. The defaults suit LEAP runs on a CPU (start in a few seconds)."""

    products: int = 10_000
    seed: int = 0
    train_tasks: int = DEFAULT_SPLIT_SIZES["train"]
    valid_seen_tasks: int = DEFAULT_SPLIT_SIZES["valid_seen"]
    valid_unseen_tasks: int = DEFAULT_SPLIT_SIZES["valid_unseen"]
    # Share of each category's product types held out for valid_unseen.
    unseen_fraction: float = 0.2
    # Maximum actions per episode when a Reset asks for none (WebShop's LEAP/ReAct runs use 15).
    horizon: int = 15

    def __post_init__(self):
        problems = []
        if not 100 <= self.products <= MAX_PRODUCTS:
            problems.append(f"products must be between 100 and {MAX_PRODUCTS}")
        if not 0 <= self.seed < 2**63:
            problems.append("seed must be between 0 and 2**63 - 1")
        for split in SPLITS:
            if not 1 <= self.split_size(split) <= MAX_SPLIT_SIZE:
                problems.append(f"{split}_tasks must be between 1 and {MAX_SPLIT_SIZE}")
        if not 0.0 < self.unseen_fraction < 1.0:
            problems.append("unseen_fraction must be in (0, 1)")
        if not 1 <= self.horizon <= 1000:
            problems.append("horizon must be between 1 and 1000")
        if problems:
            raise ValueError("invalid webshop config: " + "; ".join(problems))

    def split_size(self, split: str) -> int:
        return {"train": self.train_tasks, "valid_seen": self.valid_seen_tasks,
                "valid_unseen": self.valid_unseen_tasks}[split]


def _rank(text: str) -> str:
    return hashlib.sha256(("webshop-unseen|" + text).encode("utf-8")).hexdigest()


def unseen_types(fraction: float) -> frozenset[int]:
    """Indices of the product types held out for valid_unseen."""
    held: set[int] = set()
    for category in data.CATEGORIES:
        ids = [i for i, t in enumerate(data.PRODUCT_TYPES) if t.category == category]
        ids.sort(key=lambda i: _rank(data.PRODUCT_TYPES[i].name))
        held.update(ids[:max(1, math.floor(fraction * len(ids) + 0.5))])
    return frozenset(held)


@dataclass
class GoalSet:
    """The goals of one catalogue and configuration, generated lazily and cached."""

    catalogue: Catalogue
    config: ShopConfig
    _cache: dict = field(default_factory=dict, repr=False)

    @cached_property
    def pools(self) -> dict[str, tuple[int, ...]]:
        """Source products of each split, in a seeded order."""
        held = unseen_types(self.config.unseen_fraction)
        pools: dict[str, list[int]] = {s: [] for s in SPLITS}
        for p in self.catalogue.products:
            if p.type_id in held:
                pools["valid_unseen"].append(p.index)
            elif int(_rank("split|" + p.asin)[:8], 16) % 10 == 0:
                pools["valid_seen"].append(p.index)
            else:
                pools["train"].append(p.index)
        ordered = {}
        for split, pool in pools.items():
            random.Random(derive_seed(self.config.seed, split, "pool")).shuffle(pool)
            ordered[split] = tuple(pool)
        return ordered

    def goal(self, split: str, index: int) -> GoalRecord:
        key = (split, index)
        record = self._cache.get(key)
        if record is None:
            record = self._generate(split, index)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = record
        return record

    def _generate(self, split: str, index: int) -> GoalRecord:
        pool = self.pools[split]
        if not pool:  # a tiny catalogue may lack a split's products: fall back to any product
            pool = tuple(range(len(self.catalogue)))
        source: Product = self.catalogue[pool[index % len(pool)]]
        ptype = source.ptype
        rng = random.Random(derive_seed(self.config.seed, split, index, "goal"))
        n_attrs = min(len(source.attributes), rng.choice((1, 2, 2, 3, 3)))
        attributes = rng.sample(list(source.attributes), n_attrs)
        options = [(name, rng.choice(values)) for name, values in source.options if rng.random() < 0.85]
        price_upper = price_upper_for(source.price, rng)
        text = instruction_for(ptype, list(attributes), options, price_upper, rng)
        return GoalRecord(task_id=task_id_of(split, index), split=split, index=index, asin=source.asin,
                          category=ptype.category, query=ptype.query, name=source.title,
                          product_category=ptype.breadcrumb, instruction_text=text,
                          attributes=tuple(attributes), goal_options=tuple(options), price_upper=price_upper)
