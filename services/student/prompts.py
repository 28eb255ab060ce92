"""The student's prompt and the parsing of its answers: one module for serving and for training data.

The orchestrator builds supervised examples with `render_messages` + `format_target`, and the
student service renders its inference prompts with the same `render_messages`, so the prompt a
model is trained on and the prompt it is served with are byte-identical. Both sides then apply the
model's chat template with `chat_prompt(tokenizer, messages)` (= `apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)`); training appends `format_target(reason, action)` + the eos
token after exactly that string.

`render_messages` only accepts what the agent itself has seen (task, its own past observations and
actions, the current observation, the admissible actions): there is no parameter through which
privileged state (hidden locations, goal records, gold commands) could enter a student prompt.

Torch-free: imported by clients and by the orchestrator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jinja2

from services.student.memory import household_memory, is_move_candidate

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

#: Past turns shown in the prompt when the caller does not say otherwise. Keep training and serving on
#: the same value.
DEFAULT_HISTORY_WINDOW = 4


@dataclass(frozen=True)
class EnvPromptSpec:
    """How one environment family is prompted and how its actions are validated."""

    template: str
    role: str
    #: Rule line explaining how an action is written (generic template only).
    action_format: str = ""
    #: Regular expressions (full match, case-insensitive) for actions that are valid without being
    #: among the candidates. Empty: only candidates are valid (or, with no candidates, any action).
    free_form: tuple[str, ...] = ()
    #: Household notes (services.student.memory): what the agent holds, the places it has searched
    #: and what it saw there, the places left, all folded from its own observations over the whole
    #: history; the "go to <place>" candidates are then named through the notes, not listed.
    notes: bool = False


_HOUSEHOLD = EnvPromptSpec(
    template="household.j2",
    role="You are a household robot in a text-based home.",
    notes=True,
)

_BASH = EnvPromptSpec(
    template="generic.j2",
    role="You are an agent that completes tasks in a Linux bash shell.",
    action_format="The action is one bash command on a single line, or submit when the task is done.",
    free_form=(r".+",),
)

ENV_SPECS: dict[str, EnvPromptSpec] = {
    "household": _HOUSEHOLD,
    "alfworld": _HOUSEHOLD,
    "textworld": EnvPromptSpec(
        template="generic.j2",
        role="You are playing a text adventure game (TextWorld).",
        action_format="The action is one of the candidate commands exactly as written, e.g. 'go north', "
                      "'open fridge', 'take red apple from counter'.",
    ),
    "intercode_bash": _BASH,
    "bash": _BASH,
    "webshop": EnvPromptSpec(
        template="generic.j2",
        role="You are a shopping agent on the WebShop website: find the product the instruction describes, choose "
             "the options it names and buy it within the price limit.",
        action_format="The action is search[keywords] on the search page, or one of the candidate actions "
                      "click[...] (a product id, an option value, next >, < prev, back to search, description, "
                      "features, reviews or buy now).",
        free_form=(r"search\[.+\]",),
    ),
}
ENV_SPECS["intercode_bash"] = ENV_SPECS["bash"]

GENERIC_SPEC = EnvPromptSpec(
    template="generic.j2",
    role="You are an agent acting in a text environment.",
    action_format="The action is one command on a single line.",
)


def spec_for(env: str) -> EnvPromptSpec:
    """The prompt spec of an environment; unknown names get the generic free-form spec."""
    return ENV_SPECS.get(env.strip().lower(), GENERIC_SPEC)


@dataclass(frozen=True)
class HistoryTurn:
    """One past turn as the agent saw it: the observation and the action it took (no reason)."""

    observation: str
    action: str


@lru_cache(maxsize=1)
def _jinja() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )


_GOAL_PREFIX = re.compile(r"^\s*your task is(?: to)?\s*:\s*", re.IGNORECASE)


def _clean(text: str) -> str:
    """Normalise line endings and trailing blanks; keep the text otherwise as the agent saw it."""
    return "\n".join(line.rstrip() for line in str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()


def _turn(entry: Any) -> HistoryTurn:
    if isinstance(entry, HistoryTurn):
        return entry
    if isinstance(entry, Mapping):
        return HistoryTurn(str(entry.get("observation", "")), str(entry.get("action", "")))
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        return HistoryTurn(str(entry[0]), str(entry[1]))
    if hasattr(entry, "observation") and hasattr(entry, "action"):  # e.g. leap.v1.HistoryEntry
        return HistoryTurn(str(entry.observation), str(entry.action))
    raise TypeError(f"a history entry must be (observation, action), a mapping or a HistoryEntry, not {type(entry).__name__}")


def render_messages(
    env: str,
    goal: str,
    history: Iterable[Any],
    observation: str,
    candidates: Sequence[str],
    *,
    history_window: int = DEFAULT_HISTORY_WINDOW,
) -> list[dict[str, str]]:
    """The chat messages of one student step: a system message (role + rules) and one user message.

    `history` holds the agent's past (observation, action) pairs, oldest first, as tuples, mappings
    or HistoryEntry messages; only the last `history_window` are shown (0 shows none; a negative
    window shows all). Past reasons are never shown. Environments with notes (household) fold the
    notes from every observation in `history`, so callers pass the whole episode so far; for the
    others the prompt depends only on the turns shown.
    """
    spec = spec_for(env)
    turns = [_turn(entry) for entry in history]
    shown = _last_turns(turns, history_window)
    template = _jinja().get_template(spec.template)
    module = template.make_module()
    system = module.system(spec.role, spec.action_format) if spec.action_format else module.system(spec.role)
    candidates = [_clean(c) for c in candidates]
    goal = _GOAL_PREFIX.sub("", _clean(goal))
    notes: list[str] = []
    if spec.notes:
        memory = household_memory([_clean(t.observation) for t in turns] + [_clean(observation)], candidates,
                                  goal=goal)
        notes = memory.lines()
        candidates = [c for c in candidates if not is_move_candidate(c)]
    user = module.user(
        goal,
        [HistoryTurn(_clean(t.observation), _clean(t.action)) for t in shown],
        _clean(observation),
        candidates,
        notes,
    )
    return [{"role": "system", "content": str(system).strip()}, {"role": "user", "content": str(user).strip()}]


def prompt_state_key(env: str, goal: str, history: Sequence[Any], observation: str, candidates: Sequence[str], *,
                     history_window: int = DEFAULT_HISTORY_WINDOW) -> bytes:
    """Everything this step's prompt and every later one depend on, apart from what the environment answers.

    `render_messages` takes the same arguments. Two steps of an episode with equal keys, given the
    same actions and the same answers from the environment, get the same prompts from then on: the
    key holds the turns shown, the current observation and candidates and, for environments with
    notes, the whole state the notes are folded from (not only the lines shown). Used to tell when a
    deterministic student has come back to an earlier step (orchestrator.episodes).
    """
    spec = spec_for(env)
    turns = [_turn(entry) for entry in history]
    shown = [(_clean(t.observation), _clean(t.action)) for t in _last_turns(turns, history_window)]
    parts: list[Any] = [env.strip().lower(), _clean(goal), shown, _clean(observation), [_clean(c) for c in candidates]]
    if spec.notes:
        folded = household_memory([_clean(t.observation) for t in turns] + [_clean(observation)], (),
                                  goal=_GOAL_PREFIX.sub("", _clean(goal)))
        parts.append(sorted((name, repr(value)) for name, value in vars(folded).items()))
    return repr(parts).encode()


def history_to_send(env: str, history: Sequence[Any], history_window: int) -> list[Any]:
    """The part of an episode's history a client must send for `render_messages` to see all it uses.

    The last `history_window` turns (0: none, negative: all), or the whole history for environments
    whose prompt keeps notes folded from every past observation.
    """
    turns = list(history)
    return turns if spec_for(env).notes else _last_turns(turns, history_window)


def _last_turns(turns: list, history_window: int) -> list:
    """The last `history_window` turns (0: none, negative: all)."""
    if history_window < 0:
        return turns
    return turns[max(0, len(turns) - history_window):] if history_window else []


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The exact prompt string a model is trained on and served with (chat template, generation prompt).

    Training appends `format_target(...)` and the eos token after this string. Chat templates that
    refuse a system role (some models have none) get the system text as the first paragraph of the
    user message instead.
    """
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - jinja2 TemplateError and friends, raised by the template
        if not messages or messages[0]["role"] != "system" or "system" not in str(exc).lower():
            raise
        merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
        return tokenizer.apply_chat_template(merged + list(messages[2:]), add_generation_prompt=True, tokenize=False)


def format_target(reason: str, action: str) -> str:
    """The supervised target of one step: `REASON: ...` and `ACTION: ...` on two lines."""
    reason_line = " ".join(str(reason).split())
    action_line = " ".join(str(action).split())
    return f"REASON: {reason_line}\nACTION: {action_line}"


# ----------------------------------------------------------------------------------------------
# Parsing

@dataclass(frozen=True)
class ParsedOutput:
    """What the model said: its reason, its action (matched to a candidate when possible)."""

    reason: str
    action: str
    #: True when the action is usable: among the candidates, or allowed free text.
    valid: bool
    #: The text exactly as generated.
    raw: str


# A label such as "REASON:", "**Action**:", "### ACTION -" at the start of a line (markdown tolerated).
_LINE_LABEL = re.compile(
    r"(?im)^[ \t>#*_`~\-]*(?P<label>reason(?:ing)?|thoughts?|action)\b[ \t*_`]*(?::|\s-\s|-(?=\s))[ \t*_`]*"
)
# The same labels anywhere (for "REASON: ... ACTION: ..." on one line).
_INLINE_LABEL = re.compile(r"(?i)\b(?P<label>reason(?:ing)?|thoughts?|action)\b[ \t*_`]*:[ \t*_`]*")
_QUOTES = "\"'`“”‘’«»"
_EDGE_NOISE = re.compile(r"^[\s*_`>\-]+|[\s*_`]+$")
_SPECIAL_TOKENS = re.compile(r"<\|[^|>]{1,32}\|>|</?s>")


def _strip_value(text: str) -> str:
    value = _EDGE_NOISE.sub("", text.strip())
    while len(value) >= 2 and value[0] in _QUOTES and value[-1] in _QUOTES:
        value = _EDGE_NOISE.sub("", value[1:-1])
    if len(value) >= 2 and value[0] == "<" and value[-1] == ">":  # "<open fridge 1>" copied from the format line
        value = value[1:-1].strip()
    return value.strip(_QUOTES + " ")


def _drop_sentence_period(value: str) -> str:
    """Drop one trailing sentence period ("open fridge 1." -> "open fridge 1"), keep "ls ." and "cd ..".

    Used for free-form actions; candidate actions are matched on normalised text instead.
    """
    if len(value) >= 2 and value.endswith(".") and not value.endswith("..") and value[-2] not in " /\t":
        return value[:-1].rstrip()
    return value


def _normalise(text: str) -> str:
    text = text.strip().strip(_QUOTES).strip()
    text = re.sub(r"[.!;,]+$", "", text).strip().strip(_QUOTES)
    return " ".join(text.lower().split())


def match_candidate(action: str, candidates: Sequence[str]) -> str | None:
    """The candidate `action` stands for: exact, then normalised, then the longest one it contains."""
    if not action:
        return None
    if action in candidates:
        return action
    wanted = _normalise(action)
    by_norm: dict[str, str] = {}
    for cand in candidates:
        by_norm.setdefault(_normalise(cand), cand)
    if wanted in by_norm:
        return by_norm[wanted]
    # "I will open fridge 1" -> "open fridge 1": the candidate found on word boundaries. Several found
    # candidates are ambiguous ("go to fridge 1 or open fridge 1"), unless the shorter ones are part
    # of the longest ("take apple 1 from fridge 1" also contains a shorter candidate "fridge 1").
    found = [(norm, cand) for norm, cand in by_norm.items()
             if norm and re.search(r"(?<![\w])" + re.escape(norm) + r"(?![\w])", wanted)]
    if not found:
        return None
    found.sort(key=lambda item: len(item[0]), reverse=True)
    best_norm, best = found[0]
    if any(norm not in best_norm for norm, _ in found[1:]):
        return None
    return best


def _labels(text: str) -> list[tuple[str, int, int]]:
    """(kind, label start, value start) for each label; line-start labels win over inline ones."""
    found = [(m.group("label").lower(), m.start(), m.end()) for m in _LINE_LABEL.finditer(text)]
    if not any(kind == "action" for kind, _, _ in found):
        found = [(m.group("label").lower(), m.start(), m.end()) for m in _INLINE_LABEL.finditer(text)]
    return [("action" if kind == "action" else "reason", start, end) for kind, start, end in found]


def parse_output(text: str, candidates: Sequence[str], *, free_form: Sequence[str] = ()) -> ParsedOutput:
    """Parse `REASON: ... ACTION: ...` tolerantly. Never raises: a malformed answer is an invalid action.

    With candidates, the action is matched to one of them (exact, then normalised, then contained);
    an action outside them is invalid unless it fully matches one of the `free_form` patterns.
    Without candidates, any non-empty action given after an ACTION label is valid (subject to
    `free_form` when given).
    """
    raw = text if isinstance(text, str) else str(text)
    try:
        return _parse(raw, list(candidates), tuple(free_form))
    except Exception:  # noqa: BLE001 - a parser must never take the service down
        return ParsedOutput(reason="", action="", valid=False, raw=raw)


def _parse(raw: str, candidates: list[str], free_form: tuple[str, ...]) -> ParsedOutput:
    text = _SPECIAL_TOKENS.sub("", raw).replace("\r\n", "\n").replace("```", "\n")
    labels = _labels(text)
    reason = ""
    action_value: str | None = None
    first_action = next((i for i, (kind, _, _) in enumerate(labels) if kind == "action"), None)
    if first_action is not None:
        _, _, value_start = labels[first_action]
        rest = text[value_start:]
        line, _, after = rest.partition("\n")
        if not _strip_value(line):  # "ACTION:\nopen fridge 1"
            line = next((candidate_line for candidate_line in after.split("\n") if _strip_value(candidate_line)), "")
        action_value = _strip_value(line)
        reasons = [(start, end) for kind, start, end in labels[:first_action] if kind == "reason"]
        if reasons:
            reason_start = reasons[0][1]
            reason = text[reason_start:labels[first_action][1]]
    else:
        reasons = [(start, end) for kind, start, end in labels if kind == "reason"]
        if reasons:
            body = text[reasons[0][1]:]
            reason = body.split("\n\n", 1)[0]
    reason = " ".join(_strip_value(" ".join(reason.split())).split())

    patterns = [re.compile(p, re.IGNORECASE | re.DOTALL) for p in free_form]

    def allowed_free(value: str) -> bool:
        return bool(value) and any(p.fullmatch(value) for p in patterns)

    if action_value is None:
        # No ACTION label: accept only a line that is exactly one of the candidates.
        if candidates:
            normalised = {_normalise(c) for c in candidates}
            for line in reversed(text.split("\n")):
                value = _strip_value(line)
                if value and _normalise(value) in normalised:
                    matched = match_candidate(value, candidates)
                    return ParsedOutput(reason=reason, action=matched or value, valid=matched is not None, raw=raw)
        guess = next((_strip_value(line) for line in text.split("\n") if _strip_value(line)), "")
        return ParsedOutput(reason=reason, action=guess, valid=False, raw=raw)

    if candidates:
        matched = match_candidate(action_value, candidates)
        if matched is not None:
            return ParsedOutput(reason=reason, action=matched, valid=True, raw=raw)
        value = _drop_sentence_period(action_value)
        return ParsedOutput(reason=reason, action=value, valid=allowed_free(value), raw=raw)
    value = _drop_sentence_period(action_value)
    valid = bool(value) and (not patterns or allowed_free(value))
    return ParsedOutput(reason=reason, action=value, valid=valid, raw=raw)


def parse_for_env(env: str, text: str, candidates: Sequence[str]) -> ParsedOutput:
    """`parse_output` with the free-form rules of `env` (e.g. webshop's `search[...]`)."""
    return parse_output(text, candidates, free_form=spec_for(env).free_form)


# The ACTION label as a line starts with it (markdown tolerated), up to its colon.
_ACTION_LABEL = r"[ \t>#*_`~\-]*action\b[ \t*_`]*:"
# A completed ACTION line: the label at a line start, a value, then a newline (possibly with the
# value on the next line). Used to stop decoding as soon as the action has been written.
_ACTION_LINE_DONE = re.compile(
    r"(?im)^" + _ACTION_LABEL + r"[ \t*_`]*(?:[^\s][^\n]*\n|\n[ \t]*[^\s][^\n]*\n)"
)
# The label alone, ending the text, after a newline.
_ACTION_LABEL_AT_END = re.compile(r"(?i)\n" + _ACTION_LABEL + r"[ \t]*$")


def action_line_complete(text: str) -> bool:
    """True once `text` holds a full ACTION line (label, value and the newline that ends it)."""
    return _ACTION_LINE_DONE.search(text) is not None


def ends_with_action_label(text: str) -> bool:
    """True when `text` ends with an ACTION label that starts a line (the value comes next).

    `text` must begin at a line start (or with the newline before one): the caller decides whether
    its first line is really a line start.
    """
    return _ACTION_LABEL_AT_END.search(text) is not None
