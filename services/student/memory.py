"""The student's notes on a household episode, derived from its own observations only.

A small model with a short history window cannot remember which places it has already searched,
where it saw the object it needs, or what it is carrying: those facts scroll out of the prompt.
The household prompt therefore carries four lines the agent could have written down itself:

    Holding: plate 1 (hot)
    Task objects seen: apple 1 here, plate 2 at countertop 1
    Searched: shelf 1, countertop 1 (apple 1, plate 2)
    Not searched yet: cabinet 1, drawer 1, fridge 1

They are folded from the observations the agent received, in order (ALFWorld's phrasing, which the
embedded household world speaks too), plus the places named by its candidate actions and the words
of its task sentence. Nothing else goes in: there is no input through which hidden state could enter.
"Task objects seen" lists the objects in searched places whose kind (the name without its number)
is a word of the task ("put a hot apple in fridge": apples); "here" marks the place the agent last
arrived at. A small student otherwise "sees" the object it wants at every place ("here is the mug 1,
so I pick it up", then takes the potato that is there). A place counts as searched once
its contents were listed to the agent (arriving at an open or open-topped place, opening it, or
examining it); a closed place it only walked up to is not searched. Places are listed in the order
the first observation names them (the room order), then in the order they were first mentioned.

Torch-free and dependency-free: used by the student service and by the orchestrator's datasets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

_LIST_SPLIT = re.compile(r",\s*(?:and\s+)?|\s+and\s+")
_ARTICLE = re.compile(r"^(?:a|an|the|some)\s+", re.IGNORECASE)

#: The longest place or object name the notes read ("countertop 1", "sidetable 2"; ALFWorld's longest are
#: about 25 characters). Every name group is bounded by it, so a search costs at most that many characters
#: per start position: linear in the text, whatever a client sends (an unbounded lazy group rescans to the
#: end of the text at every start, and Python's re holds the interpreter lock for the whole search).
MAX_NAME = 80
_N = f"{{1,{MAX_NAME}}}?"

_ROOM = re.compile(r"you are in the middle of a room\. looking quickly around you, you see (?P<list>[^.\n]*)",
                   re.IGNORECASE)
# "On the countertop 1, you see a apple 1." / "The fridge 1 is open. In it, you see nothing."
_ON = re.compile(rf"on the (?P<place>[^,.\n]{_N}), you see (?P<list>[^.\n]*)", re.IGNORECASE)
_IN = re.compile(rf"the (?P<place>[^,.\n]{_N}) is open\. in it, you see (?P<list>[^.\n]*)", re.IGNORECASE)
# "You arrive at fridge 1." (older ALFWorld: "You arrive at loc 5.", which names no place).
_ARRIVE = re.compile(rf"you arrive at (?!loc \d)(?:the )?(?P<place>[^.,\n]{_N})\.", re.IGNORECASE)
_PICK = re.compile(rf"you pick up the (?P<obj>[^.\n]{_N}) from the (?P<place>[^.\n]{_N})\.", re.IGNORECASE)
_MOVE = re.compile(rf"you (?:move|put) the (?P<obj>[^.\n]{_N}) (?:to|in|on|in/on) the (?P<place>[^.\n]{_N})\.",
                   re.IGNORECASE)
_PROCESS = re.compile(rf"you (?P<verb>heat|cool|clean) the (?P<obj>[^.\n]{_N}) using the [^.\n]{_N}\.",
                      re.IGNORECASE)
_TURN = re.compile(rf"you turn (?P<word>on|off) the (?P<obj>[^.\n]{_N})\.", re.IGNORECASE)
_CARRYING = re.compile(rf"you are carrying: (?P<obj>[^.\n]{_N})\.", re.IGNORECASE)
_NOT_CARRYING = re.compile(r"you are not carrying anything", re.IGNORECASE)
_GO = re.compile(r"^go to (?P<place>.+)$", re.IGNORECASE)
_ARRIVAL = re.compile(r"you arrive at ", re.IGNORECASE)
_GOAL = re.compile(r"your task is(?: to)?\s*:\s*(?P<goal>[^\n]+)", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")
_NUMBER_SUFFIX = re.compile(r"\s+\d+$")

#: The notes' holding line, as `lines` writes it and `held_in_prompt` reads it back.
HOLDING_LABEL, NOTHING_HELD = "Holding: ", "nothing"
TASK_OBJECTS_LABEL, NONE_SEEN = "Task objects seen: ", "none yet"
#: The state words a processed object carries (heating undoes cooling and the other way round).
_STATE_WORD = {"heat": "hot", "cool": "cool", "clean": "clean"}
_UNDOES = {"hot": "cool", "cool": "hot"}


def _names(listing: str) -> list[str]:
    """ALFWorld's enumerations ("a apple 1, and a egg 2", "nothing") as plain names."""
    text = listing.strip().rstrip(".").strip()
    if not text or text.lower() == "nothing":
        return []
    names = (_ARTICLE.sub("", part.strip()).strip() for part in _LIST_SPLIT.split(text))
    return [name for name in names if name]


@dataclass
class HouseholdMemory:
    """What the agent has seen so far; `observe` folds in one observation.

    Searched places are listed with what is there in parentheses, or bare when they were empty.
    """

    #: Places in room order (first observation), then in the order they were first mentioned.
    places: list[str] = field(default_factory=list)
    #: The same places as a set (membership in constant time: a client may name tens of thousands).
    _known: set[str] = field(default_factory=set, repr=False)
    #: Contents as last listed to the agent, kept up to date by its own take / move actions.
    contents: dict[str, list[str]] = field(default_factory=dict)
    holding: str = ""
    #: Object -> state words it was seen to acquire ("hot", "clean", "on").
    states: dict[str, list[str]] = field(default_factory=dict)
    #: The words of the task sentence ("put a hot apple in fridge." -> put, a, hot, apple, in, fridge).
    goal_words: frozenset[str] = frozenset()
    #: The place the agent last arrived at ("" before its first move, or when an arrival named none).
    at: str = ""

    def __post_init__(self) -> None:
        self._known = set(self.places)

    def set_goal(self, goal: str) -> None:
        self.goal_words = frozenset(_WORD.findall(goal.lower()))

    def _place(self, name: str) -> str:
        name = " ".join(name.split())
        if name and name not in self._known:
            self.places.append(name)
            self._known.add(name)
        return name

    def observe(self, text: str) -> None:
        if not self.goal_words:
            goal = _GOAL.search(text)
            if goal:
                self.set_goal(goal.group("goal"))
        for match in _ROOM.finditer(text):
            for name in _names(match.group("list")):
                self._place(name)
        arrived = _ARRIVAL.search(text) is not None
        if arrived:
            self.at = ""
        for match in _ARRIVE.finditer(text):
            self.at = self._place(match.group("place"))
        for pattern in (_ON, _IN):
            for match in pattern.finditer(text):
                place = self._place(match.group("place"))
                self.contents[place] = _names(match.group("list"))
                if arrived and not self.at:  # older ALFWorld: "You arrive at loc 5. On the desk 1, ..."
                    self.at = place
        for match in _PICK.finditer(text):
            obj, place = match.group("obj").strip(), self._place(match.group("place"))
            if obj in self.contents.get(place, []):
                self.contents[place].remove(obj)
            self.holding = obj
        for match in _MOVE.finditer(text):
            obj, place = match.group("obj").strip(), self._place(match.group("place"))
            if place in self.contents and obj not in self.contents[place]:
                self.contents[place].append(obj)
            if self.holding == obj:
                self.holding = ""
        for match in _PROCESS.finditer(text):
            word = _STATE_WORD[match.group("verb").lower()]
            self._set_state(match.group("obj").strip(), word, _UNDOES.get(word, ""))
        for match in _TURN.finditer(text):
            on = match.group("word").lower() == "on"
            self._set_state(match.group("obj").strip(), "on" if on else "", "" if on else "on")
        match = _CARRYING.search(text)
        if match:
            self.holding = _ARTICLE.sub("", match.group("obj").strip())
        elif _NOT_CARRYING.search(text):
            self.holding = ""

    def _set_state(self, obj: str, word: str, undone: str) -> None:
        words = [w for w in self.states.get(obj, []) if w != undone and w != word]
        self.states[obj] = words + [word] if word else words

    def add_places(self, names: Iterable[str]) -> None:
        for name in names:
            self._place(name)

    def _described(self, obj: str) -> str:
        words = self.states.get(obj)
        return f"{obj} ({', '.join(words)})" if words else obj

    def task_objects(self) -> list[tuple[str, str]]:
        """(object, place) for each object in a searched place whose kind is a word of the task;
        those where the agent stands first, then in place order."""
        seen = [(obj, place) for place in self.places for obj in self.contents.get(place, [])
                if _NUMBER_SUFFIX.sub("", obj).lower() in self.goal_words]
        return [pair for pair in seen if pair[1] == self.at] + [pair for pair in seen if pair[1] != self.at]

    def lines(self) -> list[str]:
        """The four note lines of the prompt."""
        searched = [f"{place} ({', '.join(self._described(o) for o in self.contents[place])})"
                    if self.contents[place] else place for place in self.places if place in self.contents]
        unsearched = [place for place in self.places if place not in self.contents]
        wanted = [f"{self._described(obj)} {'here' if place == self.at else 'at ' + place}"
                  for obj, place in self.task_objects()]
        return [
            f"{HOLDING_LABEL}{self._described(self.holding) if self.holding else NOTHING_HELD}",
            f"{TASK_OBJECTS_LABEL}{', '.join(wanted) if wanted else NONE_SEEN}",
            f"Searched: {', '.join(searched) if searched else 'nothing yet'}",
            f"Not searched yet: {', '.join(unsearched) if unsearched else 'none'}",
        ]


def household_memory(observations: Sequence[str], candidates: Sequence[str], goal: str = "") -> HouseholdMemory:
    """The notes after `observations` (oldest first, the current one last); `candidates` name places too.

    `goal` is the task sentence; without it, the one the first observation states ("Your task is to: ...").
    """
    memory = HouseholdMemory()
    if goal.strip():
        memory.set_goal(goal)
    for text in observations:
        memory.observe(text)
    memory.add_places(match.group("place").strip() for match in map(_GO.match, candidates) if match)
    return memory


_HOLDING_LINE = re.compile(r"^" + re.escape(HOLDING_LABEL) + r"(?P<obj>.*)$", re.MULTILINE)


def held_in_prompt(prompt: str) -> str | None:
    """What a rendered prompt's notes say the agent holds: the object ("plate 1 (hot)"), "" for
    nothing, or None when the prompt carries no household notes."""
    match = _HOLDING_LINE.search(prompt)
    if match is None:
        return None
    held = match.group("obj").strip()
    return "" if held == NOTHING_HELD else held


def is_move_candidate(action: str) -> bool:
    """True for "go to <place>" candidates, which the household prompt names through the notes instead."""
    return _GO.match(action.strip()) is not None
