"""Household tasks written as ALFWorld game folders, so that the same task runs in both engines.

`export_scene(scene)` turns one household scene into the three files of an ALFWorld game folder:

- `initial_state.pddl`: a problem of ALFWorld's PDDL domain (the `alfred.pddl` the `alfworld` package
  ships). Every receptacle and object gets an ALFWorld-style id (`Cabinet_bar__plus_00_dot_02_bar_...`,
  the sink basin `Sink_bar_..._bar_SinkBasin` as in AI2-THOR) chosen so that ALFWorld's demangler
  names it exactly as the household world does ("cabinet 3", "apple 1"): the demangler numbers the
  instances of a kind in reverse order of their sorted ids. Each receptacle stands at a location of
  its own; the agent starts at one more location, in the middle of the room. Facts: receptacle and
  object types, where each object is, `openable` (closed at the start), `pickupable` for everything
  but lamps, `toggleable` for lamps, `heatable` / `coolable` / `cleanable` as the household's rules
  allow, and `canContain` for every pair of receptacle and object kinds (the household world lets
  anything be put anywhere). The goal is ALFWorld's own PDDL goal of the task type
  (`alfworld.gen.goal_library`).
- `traj_data.json`: `task_type` and `pddl_params` (what ALFWorld's hand-coded expert reads), the goal
  as a turk annotation, and a `leap` note naming the household task it came from.
- `game.tw-pddl`: JSON with `pddl_domain`, `grammar` (ALFWorld's `alfred.twl2` with the household
  goal sentence in place of UNKNOWN GOAL, as `add_task_to_grammar` does), `pddl_problem`,
  `solvable: true` and the household planner's plan as `walkthrough`.

`parity(scene, engine)` plays the household planner's plan in both engines and compares, at every
step, ALFWorld's admissible commands with the household world's full (verbose) candidate list;
`classify` names each known kind of difference (the backend README explains them).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from services.environment.backends.alfworld import paths
from services.environment.backends.alfworld.games import GAME_FILE, PROBLEM_FILE, TRAJ_FILE
from services.environment.backends.household import priors
from services.environment.backends.household.generator import VERSION as HOUSEHOLD_VERSION
from services.environment.backends.household.generator import HouseholdConfig, TaskSet
from services.environment.backends.household.planner import plan_for
from services.environment.backends.household.world import Scene, candidates, is_won, transition
from services.runtime.files import atomic_directory

#: Version of the export format; part of the cache key, so a change regenerates the cache.
EXPORT_VERSION = "1"

# ALFRED's spelling of every kind the household world uses (alfworld.gen.constants.OBJECTS spells
# them so); the sink and bathtub basins are parts of a Sink / Bathtub object in AI2-THOR's ids.
_CAMEL: dict[str, str] = {
    "alarmclock": "AlarmClock", "apple": "Apple", "armchair": "ArmChair", "bathtubbasin": "BathtubBasin", "bed": "Bed",
    "book": "Book", "bowl": "Bowl", "box": "Box", "bread": "Bread", "butterknife": "ButterKnife", "cabinet": "Cabinet",
    "candle": "Candle", "cd": "CD", "cellphone": "CellPhone", "cloth": "Cloth", "coffeemachine": "CoffeeMachine",
    "coffeetable": "CoffeeTable", "countertop": "CounterTop", "creditcard": "CreditCard", "cup": "Cup", "desk": "Desk",
    "desklamp": "DeskLamp", "diningtable": "DiningTable", "dishsponge": "DishSponge", "drawer": "Drawer",
    "dresser": "Dresser", "egg": "Egg", "floorlamp": "FloorLamp", "fork": "Fork", "fridge": "Fridge",
    "garbagecan": "GarbageCan", "handtowel": "HandTowel", "handtowelholder": "HandTowelHolder", "kettle": "Kettle",
    "keychain": "KeyChain", "knife": "Knife", "ladle": "Ladle", "laptop": "Laptop", "laundryhamper": "LaundryHamper",
    "lettuce": "Lettuce", "microwave": "Microwave", "mug": "Mug", "newspaper": "Newspaper", "pan": "Pan", "pen": "Pen",
    "pencil": "Pencil", "peppershaker": "PepperShaker", "pillow": "Pillow", "plate": "Plate", "plunger": "Plunger",
    "pot": "Pot", "potato": "Potato", "remotecontrol": "RemoteControl", "safe": "Safe", "saltshaker": "SaltShaker",
    "scrubbrush": "ScrubBrush", "shelf": "Shelf", "sidetable": "SideTable", "sinkbasin": "SinkBasin",
    "soapbar": "SoapBar", "soapbottle": "SoapBottle", "sofa": "Sofa", "spatula": "Spatula", "spoon": "Spoon",
    "spraybottle": "SprayBottle", "statue": "Statue", "stoveburner": "StoveBurner", "tissuebox": "TissueBox",
    "toaster": "Toaster", "toilet": "Toilet", "toiletpaper": "ToiletPaper", "toiletpaperhanger": "ToiletPaperHanger",
    "tomato": "Tomato", "towel": "Towel", "towelholder": "TowelHolder", "tvstand": "TVStand", "vase": "Vase",
    "watch": "Watch", "winebottle": "WineBottle",
}
_BASINS = {"sinkbasin": "Sink", "bathtubbasin": "Bathtub"}
# Types the domain's actions name as constants: declared in every problem.
_DOMAIN_OTYPES = ("KnifeType", "ButterKnifeType")
_DOMAIN_RTYPES = ("SinkBasinType", "MicrowaveType", "FridgeType")
_ABLE_FACT = (("heat", "heatable"), ("cool", "coolable"), ("clean", "cleanable"))


def camel(kind: str) -> str:
    """ALFRED's spelling of a household kind ("countertop" -> "CounterTop")."""
    return _CAMEL[kind]


def _coord(value: int) -> str:
    return f"_plus_{value // 100:02d}_dot_{value % 100:02d}"


def entity_id(kind: str, number: int, count: int) -> str:
    """The ALFWorld id that ALFWorld's demangler names "<kind> <number>" among `count` of its kind.

    The demangler sorts ids and hands out numbers count, count-1, ..., 1 in that order, so instance n
    gets the (count - n)-th smallest id.
    """
    rank = count - number
    position = f"{_coord(rank)}_bar_{_coord(0)}_bar_{_coord(0)}"
    if kind in _BASINS:
        return f"{_BASINS[kind]}_bar_{position}_bar_{camel(kind)}"
    return f"{camel(kind)}_bar_{position}"


def _number(name: str) -> int:
    return int(name.rsplit(" ", 1)[1])


def problem_text(scene: Scene) -> str:
    """The PDDL problem of a household scene (see the module docstring)."""
    import alfworld.gen.goal_library as glib  # noqa: PLC0415 - after paths has set ALFWORLD_DATA

    layout, task = scene.layout, scene.task
    recep_count: dict[str, int] = {}
    for kind in layout.recep_kinds:
        recep_count[kind] = recep_count.get(kind, 0) + 1
    obj_count: dict[str, int] = {}
    for kind in scene.obj_kinds:
        obj_count[kind] = obj_count.get(kind, 0) + 1
    receps = [entity_id(k, _number(n), recep_count[k]) for k, n in zip(layout.recep_kinds, layout.receptacles)]
    objects = [entity_id(k, _number(n), obj_count[k]) for k, n in zip(scene.obj_kinds, scene.objects)]
    locations = [f"loc_bar_{i + 1}_bar_0_bar_0_bar_0" for i in range(len(receps))]
    start = "loc_bar_0_bar_0_bar_0_bar_0"
    okinds = sorted(set(scene.obj_kinds))
    rkinds = sorted(set(layout.recep_kinds))
    otypes = sorted({camel(k) + "Type" for k in okinds} | set(_DOMAIN_OTYPES))
    rtypes = sorted({camel(k) + "Type" for k in rkinds} | set(_DOMAIN_RTYPES))

    declared = ["agent1 - agent"]
    declared += [f"{t} - otype" for t in otypes] + [f"{t} - rtype" for t in rtypes]
    declared += [f"{o} - object" for o in objects] + [f"{r} - receptacle" for r in receps]
    declared += [f"{loc} - location" for loc in [*locations, start]]

    init = [f"(atLocation agent1 {start})"]
    for r, kind, loc, openable in zip(receps, layout.recep_kinds, locations, layout.openable):
        init += [f"(receptacleType {r} {camel(kind)}Type)", f"(receptacleAtLocation {r} {loc})"]
        if openable:
            init.append(f"(openable {r})")
    movable = [k for k in okinds if k not in priors.LAMPS]
    init += [f"(canContain {camel(r)}Type {camel(o)}Type)" for r in rkinds for o in movable]
    for o, kind, where in zip(objects, scene.obj_kinds, scene.initial_locs):
        init += [f"(objectType {o} {camel(kind)}Type)", f"(inReceptacle {o} {receps[where]})",
                 f"(objectAtLocation {o} {locations[where]})"]
        init.append(f"(toggleable {o})" if kind in priors.LAMPS else f"(pickupable {o})")
        init += [f"({fact} {o})" for verb, fact in _ABLE_FACT if kind in priors.ABLE[verb]]

    goal = glib.gdict[task.task_type]["pddl"].format(
        obj=camel(task.obj_kind), recep=camel(task.dest_kind) if task.dest_kind else "",
        toggle=camel(task.lamp_kind) if task.lamp_kind else "", mrecep="")
    # goal_library writes the typed variables as "?r # receptacle" (its templates use "#" where
    # PDDL has "-"); alfworld's own generator substitutes them the same way.
    goal = goal.replace(" # ", " - ")
    lines = [f"(define (problem leap_household_{task.task_id.replace('-', '_')})", "(:domain alfred)", "(:objects"]
    lines += [f"        {d}" for d in declared] + ["        )", "", "(:init"]
    lines += [f"        {fact}" for fact in init] + ["        )", goal]
    return "\n".join(lines) + "\n"


def _pddl_params(scene: Scene) -> dict:
    task = scene.task
    return {
        "object_target": camel(task.obj_kind),
        "parent_target": camel(task.dest_kind) if task.dest_kind else "",
        "toggle_target": camel(task.lamp_kind) if task.lamp_kind else "",
        "mrecep_target": "",
        "object_sliced": False,
    }


def folder_of(scene: Scene) -> str:
    """`<split>/<task>/<trial>` for a scene, in the official layout's naming."""
    task = scene.task
    target = camel(task.lamp_kind or task.dest_kind)
    return f"{task.split}/{task.task_type}-{camel(task.obj_kind)}-None-{target}-{task.room}/trial_{task.task_id}"


def export_scene(scene: Scene) -> dict[str, str]:
    """The three files of the scene's game folder: {file name: text}."""
    task = scene.task
    domain = paths.alfworld_data_file("alfred.pddl").read_text(encoding="utf-8")
    grammar = paths.alfworld_data_file("alfred.twl2").read_text(encoding="utf-8")
    problem = problem_text(scene)
    plan = list(plan_for(scene, scene.initial_state()).actions)
    traj = {
        "task_id": f"trial_{task.task_id}",
        "task_type": task.task_type,
        "pddl_params": _pddl_params(scene),
        "scene": {"floor_plan": f"household_{task.room}", "scene_num": 0},
        "turk_annotations": {"anns": [{"task_desc": task.goal, "high_descs": [], "assignment_id": "leap"}]},
        "leap": {"generator": f"household {HOUSEHOLD_VERSION}", "export_version": EXPORT_VERSION,
                 "household_task_id": task.task_id, "room": task.room},
    }
    game = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", task.goal.rstrip(".")),
        "pddl_problem": problem,
        "solvable": True,
        "walkthrough": plan,
    }
    return {
        TRAJ_FILE: json.dumps(traj, indent=2, sort_keys=True) + "\n",
        PROBLEM_FILE: problem,
        GAME_FILE: json.dumps(game),
    }


def write_folder(folder: Path, files: dict[str, str]) -> bool:
    """Write a game folder atomically; False when an identical one exists (ValueError when it differs)."""
    if folder.exists():
        same = all((folder / name).is_file() and (folder / name).read_text(encoding="utf-8") == text
                   for name, text in files.items())
        if not same:
            raise ValueError(f"{folder} exists with other content; remove it or export somewhere else")
        return False
    with atomic_directory(folder) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return True


@dataclass
class ExportResult:
    written: int = 0
    unchanged: int = 0
    folders: list[str] = field(default_factory=list)


def export_split(out: str | os.PathLike, split: str, count: int, config: HouseholdConfig | None = None,
                 start: int = 0) -> ExportResult:
    """Household tasks [start, start + count) of a split as game folders under `out/<split>/`."""
    config = config or HouseholdConfig(**{f"{s}_tasks": max(start + count, 1) for s in ("train", "valid_seen",
                                                                                         "valid_unseen")})
    tasks = TaskSet(config)
    result = ExportResult()
    for index in range(start, start + count):
        scene = tasks.scene(split, index)
        relative = folder_of(scene)
        if write_folder(Path(out) / relative, export_scene(scene)):
            result.written += 1
        else:
            result.unchanged += 1
        result.folders.append(relative)
    return result


def write_tree(root: Path, scenes: list[Scene]) -> None:
    """Write the game folders of many scenes under `root` (a fresh folder; no per-folder atomicity)."""
    for scene in scenes:
        folder = root / folder_of(scene)
        folder.mkdir(parents=True, exist_ok=False)
        for name, text in export_scene(scene).items():
            (folder / name).write_text(text, encoding="utf-8")


# --- parity ------------------------------------------------------------------------------------------------

_EXAMINE = re.compile(r"^examine (.+)$")


@dataclass
class StepDifference:
    step: int  # actions taken before this comparison
    only_household: tuple[str, ...]
    only_alfworld: tuple[str, ...]
    unexplained: tuple[str, ...]


@dataclass
class ParityResult:
    task_id: str
    plan: list[str]
    household_won: bool
    alfworld_won: bool
    alfworld_won_before_end: bool
    alfworld_plan_length: int
    differences: list[StepDifference]
    kinds: dict[str, int]  # explained kind -> occurrences

    @property
    def unexplained(self) -> list[str]:
        return [f"step {d.step}: {c}" for d in self.differences for c in d.unexplained]


def classify(command: str, side: str, scene: Scene, state) -> str:
    """The kind of a known difference between the engines' command lists, or "" when unexplained.

    `side` is "alfworld" (offered by ALFWorld only) or "household" (offered by the household only).
    """
    layout = scene.layout
    here = state.loc
    if side == "alfworld":
        if command == "help":
            return "help"  # ALFWorld's grammar has a help command; the household world has none
        match = _EXAMINE.match(command)
        if match and here >= 0 and match.group(1) == layout.receptacles[here] and layout.openable[here] \
                and not state.opened >> here & 1:
            return "examine-closed-receptacle"  # offered by ALFWorld; works in both
        return ""
    match = _EXAMINE.match(command)
    if match and match.group(1) in scene.obj_index:
        o = scene.obj_index[match.group(1)]
        if state.holding != o and state.locs[o] == here:
            return "examine-visible-object"  # ALFWorld's domain offers examine only for the held object
    return ""


def parity(scene: Scene, engine) -> ParityResult:
    """Play the household planner's plan in both engines (see the module docstring).

    `engine` is an alfworld Engine with this scene's game loaded (engine.load(...)).
    """
    state = scene.initial_state()
    plan = list(plan_for(scene, state).actions)
    frame = engine.reset()
    alfworld_length = len(engine.plan())
    differences: list[StepDifference] = []
    kinds: dict[str, int] = {}
    won_before_end = False

    def compare(step: int) -> None:
        household = set(candidates(scene, state, verbose=True))
        alfworld = set(frame.admissible)
        only_h = tuple(sorted(household - alfworld))
        only_a = tuple(sorted(alfworld - household))
        if not only_h and not only_a:
            return
        unexplained = []
        for side, commands in (("household", only_h), ("alfworld", only_a)):
            for command in commands:
                kind = classify(command, side, scene, state)
                if kind:
                    kinds[kind] = kinds.get(kind, 0) + 1
                else:
                    unexplained.append(f"{side} only: {command}")
        differences.append(StepDifference(step, only_h, only_a, tuple(unexplained)))

    compare(0)
    for i, action in enumerate(plan):
        if frame.won:
            won_before_end = True
        state = transition(scene, state, action).state
        frame = engine.step(action)
        if not frame.valid:
            differences.append(StepDifference(i + 1, (), (), (f"ALFWorld refused the planner's action {action!r}",)))
            break
        if i + 1 < len(plan):
            compare(i + 1)
    return ParityResult(scene.task.task_id, plan, is_won(scene, state), frame.won, won_before_end, alfworld_length,
                        differences, kinds)
