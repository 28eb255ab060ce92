"""The household world's common-sense data: rooms, receptacles, objects and where objects are kept.

Everything here is plain data (no logic beyond small lookups), so that the whole "physics of where
things are" can be read and tuned in one place.

`PRIORS[object kind][receptacle kind]` is a relative weight: when a scene is generated, an object is
placed on a receptacle kind with probability proportional to its weight among the kinds present in
the scene (the task's destination kind excluded), then on one instance of that kind uniformly. The
weights imitate AI2-THOR / ALFRED scenes (apples in the fridge, on the countertop or the dining
table; keys in drawers or on side tables; mugs in cabinets, in the coffee machine or on the
countertop), and they are never uniform. The most likely kind carries roughly half of the mass, so
an agent that knows the priors searches much less than one that does not, but still has to search.
That is the structure LEAP's privileged teacher can teach and a fixed-order searcher cannot.
"""

from __future__ import annotations

# --- receptacles ------------------------------------------------------------------------------------

# Receptacles that start closed and must be opened before their contents can be seen or used.
OPENABLE: frozenset[str] = frozenset({"cabinet", "drawer", "fridge", "microwave", "safe"})

# Receptacle kinds per room: (fewest, most) instances in a generated scene. Scenes are one room,
# as ALFWorld's are.
ROOMS: dict[str, dict[str, tuple[int, int]]] = {
    "kitchen": {
        "cabinet": (2, 6), "drawer": (1, 4), "countertop": (1, 2), "fridge": (1, 1), "microwave": (1, 1),
        "sinkbasin": (1, 1), "stoveburner": (1, 2), "diningtable": (0, 1), "coffeemachine": (0, 1),
        "toaster": (0, 1), "garbagecan": (1, 1), "shelf": (0, 2),
    },
    "livingroom": {
        "sofa": (1, 1), "coffeetable": (1, 1), "sidetable": (1, 2), "shelf": (1, 3), "drawer": (1, 3),
        "cabinet": (0, 3), "armchair": (0, 2), "tvstand": (0, 1), "dresser": (0, 1), "diningtable": (0, 1),
        "garbagecan": (1, 1), "desk": (0, 1),
    },
    "bedroom": {
        "bed": (1, 1), "sidetable": (1, 2), "dresser": (1, 1), "drawer": (2, 4), "desk": (0, 1),
        "shelf": (1, 2), "garbagecan": (1, 1), "laundryhamper": (0, 1), "safe": (0, 1), "armchair": (0, 1),
    },
    "bathroom": {
        "toilet": (1, 1), "sinkbasin": (1, 2), "countertop": (1, 1), "cabinet": (2, 4), "drawer": (0, 3),
        "towelholder": (1, 1), "handtowelholder": (0, 1), "toiletpaperhanger": (1, 1), "bathtubbasin": (0, 1),
        "garbagecan": (1, 1), "shelf": (0, 1),
    },
}

# Receptacles whose contents are described with "in" (containers); the others with "on".
CONTAINERS: frozenset[str] = OPENABLE | {"garbagecan", "sinkbasin", "bathtubbasin", "laundryhamper"}

# --- appliances and lamps -----------------------------------------------------------------------------

# The receptacle kind each state-changing verb needs, and the state it gives (ALFWorld's appliances).
APPLIANCE = {"heat": "microwave", "cool": "fridge", "clean": "sinkbasin"}
STATE_WORD = {"heat": "hot", "cool": "cool", "clean": "clean"}

# Usable objects: switched on with `use`; they stand on receptacles and cannot be picked up.
LAMPS: frozenset[str] = frozenset({"desklamp", "floorlamp"})

# --- objects ------------------------------------------------------------------------------------------

# Which object kinds appear in which room (as task objects or as distractors).
ROOM_OBJECTS: dict[str, tuple[str, ...]] = {
    "kitchen": (
        "apple", "bread", "egg", "lettuce", "potato", "tomato", "mug", "cup", "bowl", "plate", "pan", "pot",
        "kettle", "knife", "butterknife", "fork", "spoon", "spatula", "ladle", "saltshaker", "peppershaker",
        "dishsponge", "winebottle", "soapbottle",
    ),
    "livingroom": (
        "remotecontrol", "keychain", "creditcard", "newspaper", "book", "laptop", "pillow", "statue", "vase",
        "watch", "box", "tissuebox", "cellphone", "cd",
    ),
    "bedroom": (
        "alarmclock", "book", "cellphone", "cd", "pen", "pencil", "keychain", "creditcard", "laptop", "pillow",
        "mug", "bowl", "watch",
    ),
    "bathroom": (
        "soapbar", "soapbottle", "toiletpaper", "spraybottle", "candle", "cloth", "handtowel", "towel",
        "scrubbrush", "plunger", "tissuebox",
    ),
}

# PRIORS[object][receptacle] = relative weight (see the module docstring). One table across rooms:
# kinds missing from a scene simply drop out when the weights are normalised.
PRIORS: dict[str, dict[str, float]] = {
    # food
    "apple": {"fridge": 50, "countertop": 20, "diningtable": 15, "microwave": 5, "sinkbasin": 5, "garbagecan": 5},
    "bread": {"countertop": 50, "diningtable": 20, "fridge": 15, "cabinet": 10, "microwave": 5},
    "egg": {"fridge": 55, "countertop": 15, "diningtable": 10, "sinkbasin": 10, "microwave": 5, "garbagecan": 5},
    "lettuce": {"fridge": 55, "countertop": 20, "diningtable": 20, "sinkbasin": 5},
    "potato": {"countertop": 45, "fridge": 20, "diningtable": 15, "cabinet": 10, "microwave": 5, "garbagecan": 5},
    "tomato": {"fridge": 50, "countertop": 25, "diningtable": 15, "sinkbasin": 5, "microwave": 5},
    # dishes and cookware
    "mug": {"cabinet": 50, "coffeemachine": 20, "countertop": 15, "sinkbasin": 10, "desk": 15, "sidetable": 10,
            "shelf": 5},
    "cup": {"cabinet": 55, "countertop": 20, "diningtable": 10, "sinkbasin": 10, "fridge": 5},
    "bowl": {"cabinet": 55, "countertop": 15, "diningtable": 15, "sinkbasin": 10, "fridge": 5, "desk": 10,
             "shelf": 10},
    "plate": {"cabinet": 55, "diningtable": 20, "countertop": 15, "sinkbasin": 10},
    "pan": {"stoveburner": 50, "cabinet": 25, "countertop": 15, "sinkbasin": 10},
    "pot": {"stoveburner": 50, "cabinet": 30, "countertop": 10, "sinkbasin": 10},
    "kettle": {"stoveburner": 55, "countertop": 25, "cabinet": 20},
    # cutlery and utensils
    "knife": {"drawer": 50, "countertop": 30, "diningtable": 10, "sinkbasin": 10},
    "butterknife": {"drawer": 55, "countertop": 25, "diningtable": 15, "sinkbasin": 5},
    "fork": {"drawer": 60, "diningtable": 20, "countertop": 15, "sinkbasin": 5},
    "spoon": {"drawer": 60, "diningtable": 15, "countertop": 15, "sinkbasin": 10},
    "spatula": {"drawer": 50, "countertop": 30, "stoveburner": 10, "sinkbasin": 10},
    "ladle": {"drawer": 50, "countertop": 25, "stoveburner": 15, "sinkbasin": 10},
    # kitchen odds and ends
    "saltshaker": {"countertop": 45, "cabinet": 30, "diningtable": 15, "shelf": 10},
    "peppershaker": {"countertop": 45, "cabinet": 30, "diningtable": 15, "shelf": 10},
    "dishsponge": {"sinkbasin": 50, "countertop": 30, "cabinet": 10, "drawer": 10},
    "winebottle": {"fridge": 45, "countertop": 20, "cabinet": 20, "diningtable": 15},
    "soapbottle": {"countertop": 50, "cabinet": 20, "sinkbasin": 15, "toilet": 15},
    # living room and bedroom
    "remotecontrol": {"coffeetable": 50, "sofa": 25, "sidetable": 15, "armchair": 10, "tvstand": 10},
    "keychain": {"drawer": 50, "sidetable": 25, "dresser": 15, "coffeetable": 10},
    "creditcard": {"drawer": 50, "sidetable": 20, "desk": 15, "dresser": 10, "coffeetable": 10},
    "cellphone": {"bed": 50, "sidetable": 20, "desk": 15, "dresser": 10, "sofa": 10, "drawer": 5},
    "book": {"shelf": 50, "desk": 20, "bed": 15, "sidetable": 10, "coffeetable": 10},
    "alarmclock": {"sidetable": 50, "desk": 25, "dresser": 15, "shelf": 10},
    "cd": {"drawer": 50, "shelf": 25, "desk": 15, "dresser": 10, "sidetable": 5},
    "pen": {"drawer": 50, "desk": 30, "sidetable": 10, "shelf": 10},
    "pencil": {"drawer": 50, "desk": 30, "sidetable": 10, "shelf": 10},
    "laptop": {"desk": 50, "bed": 25, "sofa": 15, "coffeetable": 10},
    "pillow": {"bed": 55, "sofa": 30, "armchair": 15},
    "newspaper": {"coffeetable": 45, "sofa": 25, "sidetable": 15, "diningtable": 10, "garbagecan": 5},
    "statue": {"shelf": 50, "coffeetable": 20, "sidetable": 15, "dresser": 15},
    "vase": {"shelf": 50, "coffeetable": 20, "sidetable": 15, "diningtable": 15},
    "watch": {"sidetable": 50, "drawer": 25, "dresser": 15, "desk": 10},
    "box": {"shelf": 50, "coffeetable": 20, "sidetable": 15, "cabinet": 15},
    "tissuebox": {"sidetable": 45, "toilet": 25, "countertop": 20, "shelf": 10},
    # bathroom
    "soapbar": {"countertop": 50, "bathtubbasin": 15, "sinkbasin": 15, "cabinet": 10, "toilet": 10},
    "toiletpaper": {"toiletpaperhanger": 50, "cabinet": 25, "toilet": 15, "countertop": 10},
    "spraybottle": {"cabinet": 50, "countertop": 20, "toilet": 20, "garbagecan": 10},
    "candle": {"countertop": 50, "toilet": 20, "cabinet": 20, "shelf": 10},
    "cloth": {"cabinet": 50, "countertop": 20, "bathtubbasin": 15, "sinkbasin": 10, "drawer": 5},
    "handtowel": {"handtowelholder": 55, "countertop": 25, "cabinet": 20},
    "towel": {"towelholder": 55, "cabinet": 25, "bathtubbasin": 10, "countertop": 10},
    "scrubbrush": {"toilet": 50, "cabinet": 25, "countertop": 15, "garbagecan": 10},
    "plunger": {"toilet": 55, "cabinet": 25, "garbagecan": 20},
    # lamps (usable, not takeable)
    "desklamp": {"desk": 55, "sidetable": 35, "dresser": 10},
    "floorlamp": {"sidetable": 50, "dresser": 20, "desk": 15, "shelf": 15},
}

# What the state-changing tasks may use (as in ALFWorld's PDDL domain).
HEATABLE: frozenset[str] = frozenset({"apple", "bread", "egg", "potato", "tomato", "mug", "cup", "plate"})
COOLABLE: frozenset[str] = frozenset({
    "apple", "bread", "egg", "lettuce", "potato", "tomato", "mug", "cup", "bowl", "plate", "pan", "pot",
    "winebottle",
})
CLEANABLE: frozenset[str] = frozenset({
    "apple", "lettuce", "potato", "tomato", "mug", "cup", "bowl", "plate", "pan", "pot", "kettle", "knife",
    "butterknife", "fork", "spoon", "spatula", "ladle", "dishsponge", "cloth", "soapbar",
})
ABLE = {"heat": HEATABLE, "cool": COOLABLE, "clean": CLEANABLE}
# Objects that are examined under a lamp in look_at_obj_in_light tasks.
LOOKABLE: frozenset[str] = frozenset({
    "alarmclock", "book", "cellphone", "cd", "creditcard", "keychain", "pen", "pencil", "mug", "bowl",
    "remotecontrol", "newspaper", "statue", "vase", "watch", "box", "laptop", "pillow",
})

# Receptacle kinds a task may ask an object to be put in/on, per room, besides the places the object
# is usually kept (its prior kinds with weight >= DESTINATION_MIN_WEIGHT).
ROOM_DESTINATIONS: dict[str, tuple[str, ...]] = {
    "kitchen": ("countertop", "diningtable", "cabinet", "fridge", "microwave", "shelf"),
    "livingroom": ("sofa", "coffeetable", "sidetable", "shelf", "drawer", "dresser", "armchair", "cabinet"),
    "bedroom": ("bed", "desk", "sidetable", "dresser", "drawer", "shelf", "safe"),
    "bathroom": ("countertop", "cabinet", "toilet", "drawer", "shelf", "garbagecan"),
}
DESTINATION_MIN_WEIGHT = 10

# Irregular plurals for rationales ("knives are usually kept in drawers").
PLURALS: dict[str, str] = {
    "knife": "knives", "butterknife": "butterknives", "potato": "potatoes", "tomato": "tomatoes",
    "lettuce": "lettuce", "bread": "bread", "box": "boxes", "tissuebox": "tissueboxes", "watch": "watches",
    "toiletpaper": "toiletpaper rolls", "dishsponge": "dishsponges", "cloth": "cloths",
}


def plural(kind: str) -> str:
    return PLURALS.get(kind, kind + "s")


def preposition(receptacle_kind: str) -> str:
    """"in" for containers ("in the fridge"), "on" for surfaces ("on the countertop")."""
    return "in" if receptacle_kind in CONTAINERS else "on"


def prior_weights(obj_kind: str, present: set[str] | frozenset[str], exclude: str = "") -> dict[str, float]:
    """The object's prior over the receptacle kinds present in a scene, normalised to sum to 1.

    `exclude` drops one kind (a task's destination: the object never starts there). Empty when the
    object has no prior weight on any kind present.
    """
    weights = {k: w for k, w in PRIORS.get(obj_kind, {}).items() if k in present and k != exclude and w > 0}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()} if total else {}


def usual_places(obj_kind: str, count: int = 3) -> list[str]:
    """The receptacle kinds where an object is most often kept, most likely first."""
    ranked = sorted(PRIORS.get(obj_kind, {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return [kind for kind, _ in ranked[:count]]
