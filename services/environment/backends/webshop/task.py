"""One task of the synthetic shop: its goal record, the reward of a purchase, and the products that
satisfy it (privileged: computed from the goal record, never shown to the agent)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from services.environment.backends.webshop import reward as rw
from services.environment.backends.webshop.catalogue import Product, title_nouns
from services.environment.backends.webshop.goals import GoalRecord
from services.environment.backends.webshop.shop import Shop


@dataclass
class ShopTask:
    """A goal over the shop, with cached answers about which products satisfy it."""

    shop: Shop
    goal: GoalRecord

    @cached_property
    def reward_goal(self) -> rw.Goal:
        return self.goal.reward_goal()

    def reward(self, product: Product, chosen: tuple[tuple[str, str], ...]) -> rw.Reward:
        """The reward of buying `product` with the options `chosen`."""
        ptype = product.ptype
        bought = rw.Bought(query=ptype.query, product_category=ptype.breadcrumb, title=product.title,
                           title_nouns=tuple(title_nouns(product.title)), attributes=product.attributes,
                           bullets=product.bullets, description=product.description, price=product.price,
                           chosen=chosen)
        return rw.compute(self.reward_goal, self.goal.name_nouns, bought)

    def best_choice(self, product: Product) -> tuple[tuple[str, str], ...]:
        """The options a buyer who knows the goal would choose on this product's page."""
        return rw.best_choice(self.reward_goal.options, product.options)

    def satisfies(self, product_index: int) -> bool:
        """Whether buying this product (with the best options) earns reward 1."""
        return product_index in self.gold_set

    @cached_property
    def gold(self) -> tuple[int, ...]:
        """Every product of the catalogue that earns reward 1 with the right options, catalogue order.

        Only products sharing a title noun with the goal's product can have r_type > 0, so those are
        the candidates; each is checked with the reward itself (cheap parts first)."""
        catalogue = self.shop.catalogue
        goal = self.reward_goal
        nouns = self.goal.name_nouns
        candidates: set[int] = set()
        for noun in set(nouns):
            candidates.update(catalogue.by_noun.get(noun, ()))
        found = []
        for index in sorted(candidates):
            product = catalogue[index]
            if product.price > goal.price_upper:
                continue
            ptype = product.ptype
            r_type, *_ = rw.type_reward(goal.query, goal.product_category, nouns, ptype.query, ptype.breadcrumb,
                                        title_nouns(product.title))
            if r_type != 1.0:
                continue
            if self.reward(product, self.best_choice(product)).perfect:
                found.append(index)
        return tuple(found)

    @cached_property
    def gold_set(self) -> frozenset[int]:
        return frozenset(self.gold)
