"""The seeded product catalogue: products with types, attributes, options, prices and texts.

Determinism: product i is generated from `random.Random(seed_i)` where seed_i is the first 8 bytes of
sha256("webshop/<version>|<catalogue seed>|product|<i>"); never Python's salted `hash()` nor the global
`random`. Product i does not depend on the catalogue's size, so the first 1,000 products of a
100,000-product catalogue are the 1,000-product catalogue (as WebShop's 1k / 100k subsets are
prefixes of its product file).

A product's fields follow WebShop's product records: `asin` (10 characters, "B0" + 8), `Title`,
`Description`, `BulletPoints` (the Features page), `Attributes` (never shown to the agent: WebShop
hides its attributes tab), `options` (option name -> values), `Price`, `Rating`, and through its type
`query`, `category` and `product_category`. Every attribute of a product is written somewhere in its
title, features or description (so a careful reader can check it), and nothing else of the
vocabulary's attributes is.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from functools import cached_property

from services.environment.backends.webshop import data
from services.environment.backends.webshop.data import ADJ, ProductType

VERSION = "1.0"
WORD_RE = re.compile(r"[a-z0-9]+")


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from sha256 of the parts (stable across processes and machines)."""
    digest = hashlib.sha256(("webshop/" + VERSION + "|" + "|".join(map(str, parts))).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


_ASIN_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def asin_of(seed: int, index: int, salt: int = 0) -> str:
    """A 10-character ASIN-like id ("B0" + 8 base-36 characters) for product `index`."""
    value = derive_seed(seed, "asin", index, salt)
    chars = []
    for _ in range(8):
        value, digit = divmod(value, 36)
        chars.append(_ASIN_ALPHABET[digit])
    return "B0" + "".join(chars)


@dataclass(frozen=True, slots=True)
class Product:
    """One product of the catalogue (WebShop's product record, our field names)."""

    index: int
    asin: str
    type_id: int
    brand: str
    title: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    price: float
    rating: float
    description: str
    bullets: tuple[str, ...]
    reviews: tuple[tuple[int, str], ...]

    @property
    def ptype(self) -> ProductType:
        return data.PRODUCT_TYPES[self.type_id]

    @property
    def price_text(self) -> str:
        return f"${self.price:.2f}"

    def option_values(self) -> dict[str, str]:
        """Lower-cased option value -> its option name (values are unique within a product)."""
        return {value: name for name, values in self.options for value in values}

    def search_text(self) -> str:
        """The document indexed for search, as WebShop builds it: title, description, the first
        bullet point and "name: v1, v2, and name: ..." of the options, lower-cased."""
        option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in self.options)
        first_bullet = self.bullets[0] if self.bullets else ""
        return " ".join((self.title, self.description, first_bullet, option_text)).lower()


def _title_case(phrase: str) -> str:
    return " ".join(w if w[:1].isdigit() else w[:1].upper() + w[1:] for w in phrase.split(" "))


def _brand(rng: random.Random) -> str:
    first, second = data.BRAND_SYLLABLES
    return first[rng.randrange(len(first))] + second[rng.randrange(len(second))]


_FEATURE_TEMPLATES = ("{A}: {detail}.", "{A} for {use}.", "Features {a} and a clean, simple look.",
                      "{A}, tested in our lab.")
_DESCRIPTION_TEMPLATES = ("This {type} is {a}.", "Our {type} comes with {a}.", "Enjoy {a} every day.",
                          "Every {type} we make offers {a}.")
_DETAILS = ("made to our own standard", "checked before it ships", "what our customers ask for most",
            "a favorite of our buyers")
_USES = ("home and travel", "daily routines", "busy mornings", "weekends and weekdays")


def generate_product(seed: int, index: int, asin: str) -> Product:
    """Product `index` of the catalogue with seed `seed` (the asin is chosen by the caller)."""
    rng = random.Random(derive_seed(seed, "product", index))
    type_id = rng.randrange(len(data.PRODUCT_TYPES))
    ptype = data.PRODUCT_TYPES[type_id]
    brand = _brand(rng)

    pool = [a for a, _ in ptype.attributes] + [a for a, _ in data.COMMON_ATTRIBUTES[ptype.category]]
    n_attrs = rng.randint(3, 5)
    attributes = rng.sample(pool, n_attrs)

    options = []
    for name, values in ptype.options:
        k = rng.randint(min(2, len(values)), len(values))
        chosen = set(rng.sample(values, k))
        options.append((name, tuple(v for v in values if v in chosen)))  # pool order, as a shop lists them

    lo, hi = ptype.price
    price = round(rng.uniform(lo, hi)) + rng.choice((-0.01, -0.01, -0.51, -0.05))
    price = max(price, 1.99)
    rating = rng.choice((3.5, 4.0, 4.2, 4.4, 4.5, 4.6, 4.7, 4.8, 5.0))

    # Title: brand, a neutral descriptor, the type, then up to two of the attributes and an ending.
    in_title = attributes[:rng.choice((0, 1, 1))]
    title = f"{brand} {data.DESCRIPTORS[rng.randrange(len(data.DESCRIPTORS))]} {_title_case(ptype.name)}"
    for attr in in_title:
        title += f", {_title_case(attr)}"
    if ptype.extras and rng.random() < 0.6:
        title += f" {ptype.extras[rng.randrange(len(ptype.extras))]}"

    # Features and description: every attribute not in the title lands in one of the two.
    rest = attributes[len(in_title):]
    bullets, sentences = [], []
    for attr in rest:
        if rng.random() < 0.6:
            template = _FEATURE_TEMPLATES[rng.randrange(len(_FEATURE_TEMPLATES))]
            bullets.append(template.format(A=attr[:1].upper() + attr[1:], a=attr,
                                           detail=_DETAILS[rng.randrange(len(_DETAILS))],
                                           use=_USES[rng.randrange(len(_USES))]))
        else:
            template = _DESCRIPTION_TEMPLATES[rng.randrange(len(_DESCRIPTION_TEMPLATES))]
            sentences.append(template.format(type=ptype.name, a=attr))
    for attr in in_title:  # the title's attributes are repeated in the features half of the time
        if rng.random() < 0.5:
            bullets.append(f"{attr[:1].upper() + attr[1:]}: {_DETAILS[rng.randrange(len(_DETAILS))]}.")
    rng.shuffle(bullets)
    bullets.append(data.NEUTRAL_SENTENCES[rng.randrange(len(data.NEUTRAL_SENTENCES))])
    sentences.insert(0, f"The {brand} {ptype.name}.")
    sentences.append(data.NEUTRAL_SENTENCES[rng.randrange(len(data.NEUTRAL_SENTENCES))])
    reviews = tuple((rng.choice((3, 4, 4, 5, 5)), data.REVIEW_LINES[rng.randrange(len(data.REVIEW_LINES))])
                    for _ in range(rng.randint(0, 2)))
    return Product(index=index, asin=asin, type_id=type_id, brand=brand, title=title,
                   attributes=tuple(attributes), options=tuple(options), price=round(price, 2), rating=rating,
                   description=" ".join(sentences), bullets=tuple(bullets), reviews=reviews)


# --- nouns (r_type's title score) ---------------------------------------------------------------------

def _noun_words() -> frozenset[str]:
    words = set(data.EXTRA_NOUNS)
    for ptype in data.PRODUCT_TYPES:
        words.update(ptype.nouns)
        for attr, kind in ptype.attributes:
            if kind != ADJ:
                words.update(WORD_RE.findall(attr)[-1:])  # the head noun of a noun phrase
    return frozenset(words)


NOUN_WORDS = _noun_words()
BRAND_WORDS = frozenset((a + b).lower() for a in data.BRAND_SYLLABLES[0] for b in data.BRAND_SYLLABLES[1])


def title_nouns(title: str) -> list[str]:
    """The nouns and proper nouns of a title, in order with repeats (what WebShop gets from spaCy's
    tagger; here a lexicon of the words our generator uses: type nouns, noun heads, brands)."""
    return [w for w in WORD_RE.findall(title.lower()) if w in NOUN_WORDS or w in BRAND_WORDS]


# --- the catalogue ------------------------------------------------------------------------------------

class Catalogue:
    """`size` products generated from `seed`, with lookups by asin, type and title noun."""

    def __init__(self, size: int, seed: int = 0):
        if size < 1:
            raise ValueError("a catalogue needs at least one product")
        self.size = size
        self.seed = seed
        products: list[Product] = []
        by_asin: dict[str, int] = {}
        for i in range(size):
            asin, salt = asin_of(seed, i), 0
            while asin in by_asin:  # astronomically rare; resolved deterministically
                salt += 1
                asin = asin_of(seed, i, salt)
            by_asin[asin] = i
            products.append(generate_product(seed, i, asin))
        self.products: tuple[Product, ...] = tuple(products)
        self.by_asin = by_asin

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Product:
        return self.products[index]

    def find(self, asin: str) -> Product | None:
        index = self.by_asin.get(asin.upper())
        return None if index is None else self.products[index]

    @cached_property
    def by_type(self) -> tuple[tuple[int, ...], ...]:
        """Product indices of each product type."""
        groups: list[list[int]] = [[] for _ in data.PRODUCT_TYPES]
        for p in self.products:
            groups[p.type_id].append(p.index)
        return tuple(tuple(g) for g in groups)

    @cached_property
    def by_noun(self) -> dict[str, tuple[int, ...]]:
        """Title noun -> indices of the products whose title has it (the candidates of r_type > 0)."""
        index: dict[str, list[int]] = {}
        for p in self.products:
            for noun in set(title_nouns(p.title)):
                index.setdefault(noun, []).append(p.index)
        return {k: tuple(v) for k, v in index.items()}
