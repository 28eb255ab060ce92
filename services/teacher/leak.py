"""Leak detection: does a text reveal privileged facts the student has not observed?

The privileged state lists `secrets` (short strings the student must not be told, such as
"cabinet 3" as the hiding place of "apple 1") and `facts` (sentences such as "apple 1 is in
cabinet 3"). A secret is *linked* to the entities that share a fact with it ("apple 1" for
"cabinet 3"). The rules, applied to the secrets the student has not observed yet:

1. A fact reproduced in the text leaks every secret it contains.
2. A sentence that names a linked secret together with one of its linked entities leaks it
   ("the apple is in cabinet 3", "go to cabinet 3 to get apple 1"), hedged or not: the pair is the
   hidden fact. Entities match by instance ("apple 1") or by type ("apple", "apples").
3. A sentence that asserts where something is and names a linked secret as the place leaks it
   ("it is in cabinet 3", "you will find it inside cabinet 3").
4. A secret that is the subject of a fact (an unseen object's instance name, "apple 2" of
   "apple 2 is in fridge 1"), and a secret with no linked entity (a whole fact, a gold command, a
   product name), leak whenever they are named.

Naming a place on its own is not a leak: "cabinet 3 has not been searched yet, go there next" is a
realizable instruction, because the student sees "go to cabinet 3" among its candidates. General
priors ("apples are often kept in the fridge") name no secret and never leak.

A secret is *observed* (no longer secret) at step t once an observation the student has seen up
to t shows it: a place named together with one of its linked entities ("You open the cabinet 3. In
it, you see a apple 1."), a fact's entities all named in one observation, any other secret named at
all. The student's own actions up to t make the names it wrote no secret ("take apple 2 from
fridge 1" tells it nothing new about "apple 2") but never reveal a place, and quoting them is no leak.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

# An entity in the household/ALFWorld style: lowercase words followed by an instance number.
_ENTITY = re.compile(r"\b([a-z][a-z\-]*(?: [a-z][a-z\-]*){0,2}) (\d+)\b")
# Words that end an entity's name on the left ("apple 1 is in cabinet 3": "in" is not part of it).
_NOT_NAME = {
    "a", "an", "the", "is", "are", "was", "were", "in", "on", "at", "of", "to", "from", "into", "onto",
    "inside", "under", "with", "and", "or", "it", "its", "there", "you", "i", "see", "find", "go", "take",
    "put", "move", "open", "close", "examine", "use", "heat", "cool", "clean", "slice", "check", "step",
    "steps", "than", "then", "after", "before", "by", "for", "near", "next", "be", "has", "have", "had",
}
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")
_ASSERT_PLACE = (
    r"(?:\bis|\bare|\bwas|\bwere|'s|\blies|\bsits|\bstays|\blocated|\bhidden|\bstored|\bkept|\bplaced"
    r"|\bfind\b[^.?!;]{0,30}?|\bfound|\bget (?:it|them|one))"
    r"\s+(?:\w+\s+)?(?:in|on|inside|at|under|within|in/on)\s+(?:the\s+)?"
)


class PrivilegedFacts(Protocol):
    """What the detector reads from a PrivilegedState (the protobuf message satisfies it). It also
    reads `critical_locations` and `essential_objects` where the state has them."""

    secrets: Sequence[str]
    facts: Sequence[str]


@dataclass(frozen=True)
class Leak:
    """One secret revealed by a text, with the sentence that reveals it and the rule that fired."""

    secret: str
    sentence: str
    rule: str

    def describe(self) -> str:
        return f"{self.secret!r} revealed by {self.rule}: {self.sentence!r}"


#: Letters of other scripts that read as Latin ones (the few a model could use to spell a name past a
#: plain comparison): mapped before comparing.
_LOOK_ALIKES = str.maketrans("аеіјорсхуԁһӏ", "aeijopcxydhl")


def normalize_text(text: str) -> str:
    """The form every comparison uses: compatibility-normalised (full-width and other variant characters
    as their plain forms), without format characters (zero-width spaces, soft hyphens) or combining marks,
    look-alike letters of other scripts as Latin ones, lowercase, straight quotes, single spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Mn"))
    text = unicodedata.normalize("NFKC", text).lower().translate(_LOOK_ALIKES)
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return re.sub(r"\s+", " ", text).strip()


def _contains(haystack: str, needle: str) -> bool:
    """Whole-word, case-insensitive containment (both already normalized). A space of the needle also
    matches a hyphen, an underscore, a number sign or nothing before a digit ("fridge 1" in "fridge-1",
    "fridge_1", "fridge #1", "fridge1")."""
    if not needle:
        return False
    parts = [re.escape(part) for part in needle.split(" ")]
    pattern = parts[0]
    for part in parts[1:]:
        pattern += (r"(?:[\s_#-]*)" if part[:1].isdigit() else r"[\s_#-]+") + part
    return re.search(r"(?<![\w])" + pattern + r"(?![\w])", haystack) is not None


def entities_in(text: str) -> list[str]:
    """Instance names ("apple 1", "butter knife 2") mentioned in a text, in order, without repeats."""
    found: list[str] = []
    for match in _ENTITY.finditer(normalize_text(text)):
        words = match.group(1).split()
        while words and words[0] in _NOT_NAME:
            words.pop(0)
        # Keep the last words only when an earlier one is a stop word ("see a apple 1" -> "apple 1").
        for i in range(len(words) - 1, -1, -1):
            if words[i] in _NOT_NAME:
                words = words[i + 1:]
                break
        if words:
            name = f"{' '.join(words)} {match.group(2)}"
            if name not in found:
                found.append(name)
    return found


def entity_type(entity: str) -> str:
    """"apple 1" -> "apple"; names without an instance number are returned unchanged."""
    return re.sub(r"\s+\d+$", "", normalize_text(entity))


def _type_pattern(kind: str) -> str:
    """Regex for a type name in singular or plural ("apple" / "apples", "tomato" / "tomatoes")."""
    return r"(?<![\w])" + re.escape(kind) + r"(?:s|es)?(?![\w])(?!\s+\d)"


@dataclass
class SecretIndex:
    """Secrets of one privileged state, each with the entities it shares a fact with."""

    secrets: list[str]
    facts: list[str]
    linked: dict[str, list[str]] = field(default_factory=dict)
    # Secrets that are the subject of a fact ("apple 2" in "apple 2 is in fridge 1"): named = leaked.
    subjects: set[str] = field(default_factory=set)
    # Secrets the environment declares places (its critical_locations that are not essential objects).
    places: set[str] = field(default_factory=set)

    def is_place(self, secret: str) -> bool:
        """A secret that leaks only together with what it hides (a receptacle, a location): one the
        environment lists among its critical locations, or one that shares facts with numbered
        entities without being their subject (household's "cabinet 2" of "plate 1 is in cabinet 2")."""
        if secret in self.places:
            return True
        return bool(self.linked.get(secret)) and secret not in self.subjects

    @classmethod
    def build(cls, state: PrivilegedFacts) -> SecretIndex:
        secrets = [normalize_text(s) for s in state.secrets if s and s.strip()]
        facts = [normalize_text(f) for f in state.facts if f and f.strip()]
        essential = {normalize_text(o) for o in getattr(state, "essential_objects", ()) if o and o.strip()}
        places = {normalize_text(p) for p in getattr(state, "critical_locations", ()) if p and p.strip()}
        places = {p for p in places if p in secrets and p not in essential}
        # Short secrets (names, not sentences) that are not places: what a place hides.
        names = [s for s in secrets if s not in places and not any(_contains(s, p) for p in places)]
        linked: dict[str, list[str]] = {}
        for secret in secrets:
            partners: list[str] = []
            for fact in facts:
                if not _contains(fact, secret):
                    continue
                rest = fact.replace(secret, " ")
                others = names if secret in places else []
                for entity in entities_in(rest) + [n for n in others if _contains(rest, n)]:
                    if entity != secret and entity not in partners and not _contains(secret, entity):
                        partners.append(entity)
            linked[secret] = partners
        subjects = {s for s in secrets if any(f.startswith(s + " ") for f in facts)}
        return cls(secrets=list(dict.fromkeys(secrets)), facts=facts, linked=linked, subjects=subjects,
                   places=places)

    def observed(self, secret: str, observations: Iterable[str], *, normalized: bool = False) -> bool:
        """True when one observation names a place secret with a linked entity, or another secret at all."""
        partners = self.linked.get(secret, []) if self.is_place(secret) else []
        # A statement ("apple 2 is in fridge 1") is observed when one observation names all its entities.
        parts = entities_in(secret) or [s for s in self.secrets if s != secret and _contains(secret, s)]
        for text in observations:
            norm = text if normalized else normalize_text(text)
            if len(parts) >= 2 and all(_contains(norm, p) for p in parts):
                return True
            if not _contains(norm, secret):
                continue
            if not partners or any(_contains(norm, p) for p in partners):
                return True
        return False

    def said(self, secret: str, said: Iterable[str]) -> bool:
        """True when the student itself wrote a name secret (its own action "take apple 2 from fridge 1"
        makes "apple 2" no news to it, but never tells it where anything is)."""
        if self.is_place(secret):
            return False
        return any(_contains(normalize_text(text), secret) for text in said)

    def unobserved(self, observations: Sequence[str], said: Sequence[str] = ()) -> list[str]:
        return [s for s in self.secrets if not self.observed(s, observations) and not self.said(s, said)]


def _sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_SPLIT.split(normalize_text(text))) if s]


def find_leaks(text: str, state: PrivilegedFacts | SecretIndex, observations: Sequence[str] = (),
               said: Sequence[str] = (), *, hidden: Sequence[str] | None = None) -> list[Leak]:
    """The secrets of `state` that `text` reveals and that no observation in `observations` showed.

    `observations` is what the student saw up to the step the text is about (observation texts,
    not candidate lists); `said` what it wrote itself up to then (its actions): quoting the student's
    own words is no leak, though they never reveal a hiding place. Returns one Leak per revealed
    secret (the first sentence that reveals it).
    """
    index = state if isinstance(state, SecretIndex) else SecretIndex.build(state)
    if hidden is None:  # `hidden` given: the secrets still news at this point (TrajectorySecrets.hidden_at)
        hidden = index.unobserved(observations, said)
    if not hidden or not text or not text.strip():
        return []
    quotable, places = _quotable(said, hidden, index)
    whole = _without_quotes(normalize_text(text), quotable, places)
    sentences = _sentences(whole)
    leaks: list[Leak] = []
    for secret in hidden:
        leak = _leak_of(secret, index, whole, sentences)
        if leak is not None:
            leaks.append(leak)
    return leaks


def _quotable(said: Sequence[str], hidden: Sequence[str], index: SecretIndex) -> tuple[list[str], list[str]]:
    """(The student's actions a text may quote without leaking, the hidden places a quote keeps visible).

    An action that is part of a hidden secret, or of an entity linked to a hidden place ("1", "apple",
    "fridge 1": a fragment it typed), is never one: blanking it would erase the words of a leak."""
    protected = set(hidden)
    places = [secret for secret in hidden if index.is_place(secret)]
    for secret in places:
        protected.update(index.linked.get(secret, []))
    quotable = []
    for action in said:
        norm = normalize_text(action) if action else ""
        if norm.strip() and not any(_contains(p, norm) for p in protected):
            quotable.append(norm)
    return quotable, places


_QUOTE_OPEN, _QUOTE_CLOSE = "[\"'\u201c]", "[\"'\u201d]"


def _without_quotes(text: str, said: Sequence[str], places: Sequence[str] = ()) -> str:
    """The text with the student's own actions, where quoted ('"take apple 1 from fridge 1" had no
    effect'), replaced by a marker: repeating them tells it nothing new. A hidden place the quote names
    stays in the marker, so "'go to fridge 1': the apple is inside" still names the place with the apple;
    an action written as the teacher's own words is not blanked at all."""
    for action in sorted(set(said), key=len, reverse=True):
        def marker(match, action=action) -> str:
            named = [place for place in places if _contains(action, place)]
            return " (its action" + (": " + ", ".join(named) if named else "") + ") "
        text = re.sub(_QUOTE_OPEN + r"\s*" + re.escape(action) + r"\s*" + _QUOTE_CLOSE, marker, text)
    return text


def _leak_of(secret: str, index: SecretIndex, whole: str, sentences: list[str]) -> Leak | None:
    for fact in index.facts:
        if _contains(fact, secret) and _contains(whole, fact):
            return Leak(secret, fact, "a privileged fact quoted verbatim")
    if not index.is_place(secret):
        # Secrets may hold punctuation (commands, product names): look for them in the whole text.
        if _contains(whole, secret):
            sentence = next((s for s in sentences if _contains(s, secret)), secret)
            return Leak(secret, sentence, "naming an unobserved secret")
        return None
    partners = index.linked[secret]
    for sentence in sentences:
        if not _contains(sentence, secret):
            continue
        for partner in partners:
            if _contains(sentence.replace(secret, " "), partner):
                return Leak(secret, sentence, f"naming {partner!r} with its hidden place")
            if re.search(_type_pattern(entity_type(partner)), sentence.replace(secret, " ")):
                return Leak(secret, sentence, f"naming a {entity_type(partner)} with its hidden place")
        if re.search(_ASSERT_PLACE + re.escape(secret) + r"(?![\w])", sentence):
            return Leak(secret, sentence, "asserting that something is in an unobserved place")
    return None


def leaked_secrets(text: str, state: PrivilegedFacts, observations: Sequence[str] = (),
                   said: Sequence[str] = ()) -> list[str]:
    """Just the leaked secret strings (see find_leaks)."""
    return [leak.secret for leak in find_leaks(text, state, observations, said)]


HIDDEN_MARK = "[hidden]"


def redact(text: str, privileged: PrivilegedFacts) -> str:
    """`text` with every secret and privileged fact replaced by HIDDEN_MARK (longest first), for messages
    that leave the teacher (a refused correction names the secret its reason leaked)."""
    terms = sorted({normalize_text(t) for t in [*privileged.secrets, *privileged.facts] if t and t.strip()},
                   key=len, reverse=True)
    for term in terms:
        text = re.sub(r"(?<![\w])" + re.escape(term).replace(r"\ ", r"\s+") + r"(?![\w])", HIDDEN_MARK, text,
                      flags=re.IGNORECASE)
    return text


class TrajectorySecrets:
    """When each secret of `index` stops being news to the student of one trajectory, found in one pass:
    the step whose observation first shows it or whose action first names it (len(steps) when only the
    episode's last observation shows it). Checking every step's reason against every earlier observation
    again was quadratic in the episode: megabytes of observation text held a teacher thread for minutes.
    `check(what)` (a Deadline's) runs between steps."""

    def __init__(self, index: SecretIndex, trajectory, check: Callable[[str], None] | None = None):
        steps = list(trajectory.steps)
        self.index = index
        self.steps = len(steps)
        self.actions = [normalize_text(step.action) for step in steps]
        observations = [normalize_text(step.observation) for step in steps]
        if steps and steps[-1].next_observation:
            observations.append(normalize_text(steps[-1].next_observation))
        self._known_at: dict[str, int] = {}
        pending = list(index.secrets)
        for t, observation in enumerate(observations):
            if check is not None:
                check("checking the corrections for leaks")
            said = self.actions[t] if t < len(self.actions) else ""
            still = []
            for secret in pending:
                if index.observed(secret, [observation], normalized=True) or (said and index.said(secret, [said])):
                    self._known_at[secret] = t
                else:
                    still.append(secret)
            pending = still

    def hidden_at(self, t: int) -> list[str]:
        """The secrets still news to the student when it acted at step t (t = len(steps): at the end)."""
        return [s for s in self.index.secrets if self._known_at.get(s, self.steps + 1) > t]

    def leaks(self, text: str, t: int) -> list[Leak]:
        """find_leaks for a text about step t (a reason), or about the whole episode (t = len(steps))."""
        return find_leaks(text, self.index, said=self.actions[:t + 1], hidden=self.hidden_at(t))


def observations_up_to(trajectory, t: int) -> list[str]:
    """What the student of `trajectory` (a common.proto Trajectory) had seen when it acted at step t:
    the observations of steps 0..t (each step's observation is the one it acted on)."""
    steps = list(trajectory.steps)
    return [step.observation for step in steps[: t + 1]]


def observations_all(trajectory) -> list[str]:
    """Everything the student saw in the whole episode, the final observation included."""
    texts = [step.observation for step in trajectory.steps]
    if trajectory.steps and trajectory.steps[-1].next_observation:
        texts.append(trajectory.steps[-1].next_observation)
    return texts


def actions_up_to(trajectory, t: int) -> list[str]:
    """What the student wrote itself up to and including step t (its actions)."""
    return [step.action for step in list(trajectory.steps)[: t + 1]]
