"""`household`: the embedded ALFWorld-style world (pure Python, no dependencies).

Modules: priors (data: rooms, receptacles, objects, where things are kept), world (rules, grammar,
texts), generator (seeded lazy tasks and splits), planner (views and the shortest-plan planner),
experts (planner / searcher / prior searcher and their rationales), backend (the Backend).
"""

from services.environment.backends.household.backend import ENGINE, NAME, HouseholdBackend, HouseholdEpisode
from services.environment.backends.household.generator import HouseholdConfig

__all__ = ["ENGINE", "NAME", "HouseholdBackend", "HouseholdConfig", "HouseholdEpisode"]
