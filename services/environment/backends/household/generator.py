"""Seeded, lazy task generation with train / valid_seen / valid_unseen splits.

Determinism: task i of split s is generated from `random.Random(seed)` where the seed is the first 8
bytes of sha256("household/<version>|<s>|<i>|<part>") (never Python's per-process salted `hash()`,
never the global `random`). The same (split, index, config) gives the same scene, the same goal and
therefore the same observations in every process on every machine. Generation is lazy (task i is
built on demand) and cached.

Task types come in balanced blocks of six: tasks 6k..6k+5 of a split hold each task type once, in a
seeded order.

Splits and the valid_unseen rule: a task is a *combination* (task type, object kind, destination
kind) -- for look_at_obj_in_light, (task type, object kind, lamp kind). For every task type the
combinations are sorted by sha256 of their name and the first `unseen_fraction` of them (at least
one) are held out: `valid_unseen` draws only held-out combinations, `train` and `valid_seen` only the
others. So a valid_unseen task asks for an object/receptacle pairing that no train task ever asks for
(e.g. "put a cool tomato in cabinet." when train cools tomatoes only for the diningtable or the
microwave), while the objects, receptacles and priors themselves are all seen in train. valid_seen
differs from train only by its seeds: new scenes of familiar combinations.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from functools import lru_cache

from services.environment.backends.household import priors
from services.environment.backends.household.world import TASK_TYPES, TASK_VERB, Layout, Scene, Task

VERSION = "1.0"
SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")
DEFAULT_SPLIT_SIZES = {"train": 2000, "valid_seen": 200, "valid_unseen": 200}


@dataclass(frozen=True)
class HouseholdConfig:
    """Knobs of the generated world. The defaults suit a tiny CPU student (short prompts)."""

    train_tasks: int = DEFAULT_SPLIT_SIZES["train"]
    valid_seen_tasks: int = DEFAULT_SPLIT_SIZES["valid_seen"]
    valid_unseen_tasks: int = DEFAULT_SPLIT_SIZES["valid_unseen"]
    # Receptacles per scene (inclusive range); a scene always has at least the ones its task needs.
    min_receptacles: int = 10
    max_receptacles: int = 14
    # Objects besides the task's own (inclusive range).
    min_distractors: int = 3
    max_distractors: int = 7
    # Chance of one extra instance of the task's object kind (two for pick_two tasks).
    extra_target_prob: float = 0.25
    # Share of (task type, object, destination) combinations held out for valid_unseen.
    unseen_fraction: float = 0.2
    # Maximum actions per episode when a Reset asks for none (LEAP's ALFWorld rollouts use 20).
    horizon: int = 20
    # Offer ALFWorld's full candidate list (examine every receptacle and visible object) instead of
    # the compact one.
    verbose_candidates: bool = False

    def __post_init__(self):
        problems = []
        for split in SPLITS:
            if self.split_size(split) < 1:
                problems.append(f"{split}_tasks must be >= 1")
        if not 1 <= self.min_receptacles <= self.max_receptacles:
            problems.append("need 1 <= min_receptacles <= max_receptacles")
        if not 0 <= self.min_distractors <= self.max_distractors:
            problems.append("need 0 <= min_distractors <= max_distractors")
        if not 0.0 <= self.extra_target_prob <= 1.0:
            problems.append("extra_target_prob must be in [0, 1]")
        if not 0.0 < self.unseen_fraction < 1.0:
            problems.append("unseen_fraction must be in (0, 1)")
        if self.horizon < 1:
            problems.append("horizon must be >= 1")
        if problems:
            raise ValueError("invalid household config: " + "; ".join(problems))

    def split_size(self, split: str) -> int:
        return {"train": self.train_tasks, "valid_seen": self.valid_seen_tasks,
                "valid_unseen": self.valid_unseen_tasks}[split]


# --- combinations ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Combo:
    task_type: str
    obj_kind: str
    target: str  # destination receptacle kind, or the lamp kind for look_at_obj_in_light
    rooms: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.task_type}|{self.obj_kind}|{self.target}"


def _destinations(obj: str, room: str) -> set[str]:
    usual = {k for k, w in priors.PRIORS.get(obj, {}).items() if w >= priors.DESTINATION_MIN_WEIGHT}
    return (usual | set(priors.ROOM_DESTINATIONS[room])) & set(priors.ROOMS[room])


def _has_home(obj: str, room: str, exclude: str) -> bool:
    """Whether the object can start somewhere in the room other than `exclude`."""
    return any(k in priors.ROOMS[room] and k != exclude for k in priors.PRIORS.get(obj, {}))


def _build_combos() -> dict[str, list[Combo]]:
    rooms_of: dict[tuple[str, str, str], list[str]] = {}
    for task_type in TASK_TYPES:
        verb = TASK_VERB.get(task_type, "")
        for room, objects in priors.ROOM_OBJECTS.items():
            for obj in objects:
                if task_type == "look_at_obj_in_light":
                    if obj not in priors.LOOKABLE:
                        continue
                    for lamp in sorted(priors.LAMPS):
                        if _has_home(lamp, room, "") and _has_home(obj, room, ""):
                            rooms_of.setdefault((task_type, obj, lamp), []).append(room)
                    continue
                if verb:
                    appliance = priors.APPLIANCE[verb]
                    if obj not in priors.ABLE[verb] or appliance not in priors.ROOMS[room]:
                        continue
                for dest in sorted(_destinations(obj, room)):
                    if verb and dest in (priors.APPLIANCE[verb], "garbagecan"):
                        continue
                    if task_type == "pick_two_obj_and_place" and dest == "garbagecan":
                        continue
                    if _has_home(obj, room, dest):
                        rooms_of.setdefault((task_type, obj, dest), []).append(room)
    combos: dict[str, list[Combo]] = {t: [] for t in TASK_TYPES}
    for (task_type, obj, target), rooms in sorted(rooms_of.items()):
        combos[task_type].append(Combo(task_type, obj, target, tuple(sorted(set(rooms)))))
    return combos


def _stable_rank(text: str) -> str:
    return hashlib.sha256(("household-unseen|" + text).encode("utf-8")).hexdigest()


@lru_cache(maxsize=8)
def combos_by_split(unseen_fraction: float) -> dict[str, dict[str, tuple[Combo, ...]]]:
    """{"seen"|"unseen": {task_type: combos}} under the held-out rule of the module docstring."""
    seen: dict[str, tuple[Combo, ...]] = {}
    unseen: dict[str, tuple[Combo, ...]] = {}
    for task_type, combos in _build_combos().items():
        ranked = sorted(combos, key=lambda c: _stable_rank(c.key))
        held = max(1, round(unseen_fraction * len(ranked)))
        unseen[task_type] = tuple(sorted(ranked[:held], key=lambda c: c.key))
        seen[task_type] = tuple(sorted(ranked[held:], key=lambda c: c.key))
    return {"seen": seen, "unseen": unseen}


# --- seeds ----------------------------------------------------------------------------------------------

def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(("household/" + VERSION + "|" + "|".join(map(str, parts))).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def task_id_of(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


def parse_task_id(task_id: str) -> tuple[str, int] | None:
    """("train", 42) for "train-00042"; None when malformed."""
    split, sep, number = task_id.rpartition("-")
    if not sep or not number.isdigit():
        return None
    return split, int(number)


def task_type_of(split: str, index: int) -> str:
    block, slot = divmod(index, len(TASK_TYPES))
    order = list(TASK_TYPES)
    random.Random(derive_seed(split, "types", block)).shuffle(order)
    return order[slot]


# --- scenes ---------------------------------------------------------------------------------------------

_GOALS = {
    "pick_and_place_simple": ("put a {o} {p} {r}.", "put some {o} {p} {r}."),
    "pick_clean_then_place_in_recep": ("put a clean {o} {p} {r}.", "clean some {o} and put it {p} {r}."),
    "pick_heat_then_place_in_recep": ("put a hot {o} {p} {r}.", "heat some {o} and put it {p} {r}."),
    "pick_cool_then_place_in_recep": ("put a cool {o} {p} {r}.", "cool some {o} and put it {p} {r}."),
    "pick_two_obj_and_place": ("put two {o} {p} {r}.", "find two {o} and put them {p} {r}."),
    "look_at_obj_in_light": ("examine the {o} with the {r}.", "look at {o} under the {r}."),
}


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    kinds = sorted(weights)
    return rng.choices(kinds, weights=[weights[k] for k in kinds], k=1)[0]


def _receptacle_counts(rng: random.Random, room: str, required: list[str], config: HouseholdConfig) -> dict[str, int]:
    spec = priors.ROOMS[room]
    counts = {kind: 0 for kind in spec}
    for kind in required:
        counts[kind] = max(counts[kind], 1)
    target = rng.randint(config.min_receptacles, config.max_receptacles)
    target = min(max(target, sum(counts.values())), sum(hi for _, hi in spec.values()))
    base = sorted(spec)
    rng.shuffle(base)
    for kind in base:  # the room's usual furniture first (each kind up to its minimum)
        while counts[kind] < spec[kind][0] and sum(counts.values()) < target:
            counts[kind] += 1
    while sum(counts.values()) < target:  # then more of what rooms have several of
        room_left = {k: spec[k][1] - counts[k] for k in sorted(spec) if counts[k] < spec[k][1]}
        kind = _weighted_choice(rng, {k: float(v) for k, v in room_left.items()})
        counts[kind] += 1
    return {k: v for k, v in counts.items() if v}


def _place(rng: random.Random, obj_kind: str, kinds_present: frozenset[str], layout_instances: dict[str, list[int]],
           exclude: str = "") -> int | None:
    weights = priors.prior_weights(obj_kind, kinds_present, exclude)
    if not weights:
        return None
    kind = _weighted_choice(rng, weights)
    return rng.choice(layout_instances[kind])


def generate(split: str, index: int, config: HouseholdConfig) -> Scene:
    """Task `index` of `split` (0 <= index < the split's size is the caller's business)."""
    task_type = task_type_of(split, index)
    group = "unseen" if split == "valid_unseen" else "seen"
    combos = combos_by_split(config.unseen_fraction)[group][task_type]
    rng = random.Random(derive_seed(split, index, "scene"))
    combo = combos[rng.randrange(len(combos))]
    room = combo.rooms[rng.randrange(len(combo.rooms))]
    obj_kind = combo.obj_kind
    verb = TASK_VERB.get(task_type, "")
    is_look = task_type == "look_at_obj_in_light"
    dest = "" if is_look else combo.target
    lamp = combo.target if is_look else ""
    spec = priors.ROOMS[room]

    # Receptacles: what the task needs, a home for its object (and lamp), then the room's furniture.
    required = [dest] if dest else []
    if verb:
        required.append(priors.APPLIANCE[verb])
    for kind, exclude in ((obj_kind, dest), (lamp, "")):
        if kind:
            homes = {k: w for k, w in priors.PRIORS[kind].items() if k in spec and k != exclude}
            if not any(k in required for k in homes):
                required.append(_weighted_choice(rng, homes))
    counts = _receptacle_counts(rng, room, required, config)
    kind_order = sorted(counts)
    rng.shuffle(kind_order)
    receptacles: list[str] = []
    recep_kinds: list[str] = []
    for kind in kind_order:
        for n in range(1, counts[kind] + 1):
            receptacles.append(f"{kind} {n}")
            recep_kinds.append(kind)
    kinds_present = frozenset(recep_kinds)
    instances: dict[str, list[int]] = {}
    for i, kind in enumerate(recep_kinds):
        instances.setdefault(kind, []).append(i)

    # Objects: the task's own (never already where the task wants them), a lamp, distractors.
    placed: list[tuple[str, int]] = []
    n_targets = (2 if task_type == "pick_two_obj_and_place" else 1) + (rng.random() < config.extra_target_prob)
    for _ in range(n_targets):
        where = _place(rng, obj_kind, kinds_present, instances, exclude=dest)
        assert where is not None, f"no home for {obj_kind} in {room}"
        placed.append((obj_kind, where))
    if lamp:
        where = _place(rng, lamp, kinds_present, instances)
        assert where is not None, f"no place for {lamp} in {room}"
        placed.append((lamp, where))
    pool = [k for k in priors.ROOM_OBJECTS[room] if k != obj_kind and priors.prior_weights(k, kinds_present)]
    for _ in range(rng.randint(config.min_distractors, config.max_distractors)):
        kind = pool[rng.randrange(len(pool))]
        where = _place(rng, kind, kinds_present, instances)
        if where is not None:
            placed.append((kind, where))

    # Instance numbers per kind in a random order, and a random listing order.
    rng.shuffle(placed)
    numbers: dict[str, int] = {}
    objects, obj_kinds, locs = [], [], []
    for kind, where in placed:
        numbers[kind] = numbers.get(kind, 0) + 1
        objects.append(f"{kind} {numbers[kind]}")
        obj_kinds.append(kind)
        locs.append(where)

    templates = _GOALS[task_type]
    template = templates[rng.randrange(len(templates))]
    target_word = lamp or dest
    goal = template.format(o=obj_kind, r=target_word, p=priors.preposition(dest) if dest else "")
    task = Task(task_id=task_id_of(split, index), split=split, index=index, task_type=task_type, goal=goal,
                obj_kind=obj_kind, dest_kind=dest, verb=verb, lamp_kind=lamp, room=room)
    layout = Layout(task, tuple(receptacles), tuple(recep_kinds),
                    tuple(kind in priors.OPENABLE for kind in recep_kinds))
    return Scene(layout, tuple(objects), tuple(obj_kinds), tuple(locs))


@dataclass
class TaskSet:
    """The tasks of one configuration, generated lazily and cached."""

    config: HouseholdConfig = field(default_factory=HouseholdConfig)

    def __post_init__(self):
        self._cached = lru_cache(maxsize=4096)(self._generate)

    def _generate(self, split: str, index: int) -> Scene:
        return generate(split, index, self.config)

    def scene(self, split: str, index: int) -> Scene:
        return self._cached(split, index)

    def size(self, split: str) -> int:
        return self.config.split_size(split)
