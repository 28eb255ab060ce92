"""The LLM teacher: a privileged prompt, one JSON answer per trajectory, validation and retries.

One call per trajectory. The prompt (templates/llm/<env>/, then the family of the environment's teacher
profile, e.g. household for alfworld, then templates/llm/default/)
shows the task, the privileged information the realizability level allows, and the student's
trajectory; it asks for {"summary": str, "steps": [{"t", "reason", "action"}]}. The answer is parsed
tolerantly and validated (services.teacher.validation). An invalid answer is sent back with the
problems listed, up to `max_retries` times; then the correction fails with ok=False and the last
problems in `error` (the RPC still succeeds, so a LEAP run goes on with its other trajectories).

What the prompt may show, by level (VISIBLE_PRIVILEGED): 0 nothing but the goal; 25 the task type and
the objects it needs; 50, 75, 100 everything (facts, critical locations, optimal actions). What the
reasons may reveal is set by the level's instructions and enforced below 75 by the leak detector.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from services.teacher import profiles, templates
from services.teacher.backends.base import AnnotationJob, BackendSpec, CorrectionJob
from services.teacher.backends.chat import ChatModel, ChatRejected
from services.teacher.leak import SecretIndex, TrajectorySecrets
from services.teacher.levels import must_be_leak_free
from services.teacher.privileged import PrivilegedSource
from services.teacher.types import AnnotationResult, CorrectionResult, Usage
from services.teacher.validation import (
    AnswerFormatError,
    Validated,
    first_json_object,
    validate_annotation,
    validate_correction,
)

log = logging.getLogger("leap.teacher.llm")

# level -> (show the objects the task needs, show where things are and how to solve it)
VISIBLE_PRIVILEGED = {0: (False, False), 25: (True, False), 50: (True, True), 75: (True, True), 100: (True, True)}

_ENV_TITLES = {
    "household": "a text household world",
    "alfworld": "ALFWorld, a text household world",
    "textworld": "a TextWorld text adventure",
    "webshop": "an online shop (WebShop)",
    "intercode_bash": "a Bash shell (InterCode)",
}


@dataclass(frozen=True)
class Pricing:
    """US dollars per 1000 tokens, for cost accounting (0 for local or free models)."""

    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000.0 * self.prompt_per_1k + completion_tokens / 1000.0 * self.completion_per_1k


@dataclass(frozen=True)
class LlmSettings:
    max_new_tokens: int = 1024
    default_temperature: float = 0.0
    default_max_retries: int = 2
    # Prompt budget: observations and candidate lists longer than this are shortened.
    max_observation_chars: int = 600
    max_candidates: int = 60
    request_timeout_s: float = 120.0


def _clip(text: str, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def template_for(env: str, name: str) -> str:
    """The LLM teacher's template `name` for an environment (its own, its profile family's, or default)."""
    return profiles.template_for("llm", env, name)


class LlmTeacher:
    name = "llm"

    def __init__(self, chat: ChatModel, *, settings: LlmSettings | None = None, pricing: Pricing | None = None):
        self.chat = chat
        self.settings = settings or LlmSettings()
        self.pricing = pricing or Pricing()

    @property
    def model(self) -> str:
        return self.chat.model_id

    @property
    def needs_loading(self) -> bool:
        """True for a local model not loaded yet: the server loads it after it starts listening
        (NOT_SERVING until then), so a slow load never looks like a crashed process."""
        return not getattr(self.chat, "loaded", True)

    def load(self) -> None:
        self.chat.load()

    # --- prompts -------------------------------------------------------------------------------
    def _step_views(self, trajectory, with_candidates: bool) -> list[dict]:
        views = []
        for t, step in enumerate(trajectory.steps):
            candidates = list(step.candidates) if with_candidates else []
            if len(candidates) > self.settings.max_candidates:
                hidden = len(candidates) - self.settings.max_candidates
                candidates = candidates[: self.settings.max_candidates] + [f"(and {hidden} more)"]
            views.append({"t": t, "observation": _clip(step.observation, self.settings.max_observation_chars),
                          "candidates": candidates, "action": step.action})
        return views

    def correction_messages(self, job: CorrectionJob) -> list[dict]:
        trajectory = job.trajectory
        env = trajectory.task.env
        show_objects, show_locations = VISIBLE_PRIVILEGED[job.level]
        last = trajectory.steps[-1] if trajectory.steps else None
        context = {
            "env_title": _ENV_TITLES.get(env, f"the {env or 'text'} environment"),
            "level": job.level,
            "goal": trajectory.goal or job.privileged.goal,
            "privileged": job.privileged if show_objects else None,
            "show_locations": show_locations,
            "steps": self._step_views(trajectory, with_candidates=True),
            "final_observation": _clip(last.next_observation, self.settings.max_observation_chars) if last else "",
        }
        return [
            {"role": "system", "content": templates.render(template_for(env, "correct_system"), **context)},
            {"role": "user", "content": templates.render(template_for(env, "correct_user"), **context)},
        ]

    def annotation_messages(self, job: AnnotationJob) -> list[dict]:
        demo = job.demonstration
        env = demo.task.env
        context = {
            "env_title": _ENV_TITLES.get(env, f"the {env or 'text'} environment"),
            "goal": demo.goal or job.privileged.goal,
            "steps": self._step_views(demo, with_candidates=False),
        }
        return [
            {"role": "system", "content": templates.render(template_for(env, "annotate_system"), **context)},
            {"role": "user", "content": templates.render(template_for(env, "annotate_user"), **context)},
        ]

    # --- the retry loop ------------------------------------------------------------------------
    def _ask_until_valid(self, messages: list[dict], check: Callable[[dict], Validated], *, max_retries: int,
                         temperature: float, deadline, what: str) -> tuple[Validated | None, str, Usage, int]:
        """Ask, validate, feed problems back; returns (valid result or None, last error, usage, attempts)."""
        usage = Usage()
        conversation = list(messages)
        last_error = ""
        attempts = 0
        for attempt in range(1, max_retries + 2):
            deadline.check(what)
            attempts = attempt
            try:
                reply = self.chat.complete(conversation, max_tokens=self.settings.max_new_tokens,
                                           temperature=temperature, timeout_s=deadline.remaining())
            except ChatRejected as exc:
                return None, str(exc), usage, attempts
            usage.add(Usage(reply.prompt_tokens, reply.completion_tokens,
                            self.pricing.cost(reply.prompt_tokens, reply.completion_tokens), 1))
            try:
                validated = check(first_json_object(reply.text))
            except AnswerFormatError as exc:
                validated = Validated(errors=[str(exc)])
            if validated.ok:
                return validated, "", usage, attempts
            last_error = validated.message()
            log.info("invalid teacher answer", extra={"attempt": attempt, "problems": last_error[:500]})
            # Keep the prompt bounded: the original request, the last answer, and what was wrong with it.
            conversation = list(messages) + [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": templates.render("llm/retry.j2", errors=last_error)},
            ]
        return None, last_error, usage, attempts

    def correct(self, job: CorrectionJob, source: PrivilegedSource) -> CorrectionResult:
        index = SecretIndex.build(job.privileged)
        leak_free = must_be_leak_free(job.level)
        secrets = TrajectorySecrets(index, job.trajectory, job.deadline.check) if leak_free else None
        temperature = job.temperature if job.temperature > 0 else self.settings.default_temperature
        retries = job.max_retries if job.max_retries > 0 else self.settings.default_max_retries
        validated, error, usage, attempts = self._ask_until_valid(
            self.correction_messages(job),
            lambda obj: validate_correction(obj, job.trajectory, index, leak_free=leak_free, secrets=secrets),
            max_retries=retries, temperature=temperature, deadline=job.deadline, what="the LLM correction",
        )
        if validated is None:
            return CorrectionResult.failure(
                self.name, job.level,
                f"no valid correction after {attempts} attempt(s): {error}", usage=usage, attempts=attempts)
        return CorrectionResult(ok=True, teacher=self.name, realizability_level=job.level,
                                summary=validated.summary, steps=validated.steps, usage=usage, attempts=attempts)

    def annotate(self, job: AnnotationJob, source: PrivilegedSource) -> AnnotationResult:
        index = SecretIndex.build(job.privileged)
        secrets = TrajectorySecrets(index, job.demonstration, job.deadline.check)
        retries = job.max_retries if job.max_retries > 0 else self.settings.default_max_retries
        validated, error, usage, attempts = self._ask_until_valid(
            self.annotation_messages(job),
            lambda obj: validate_annotation(obj, job.demonstration, index, secrets),
            max_retries=retries, temperature=self.settings.default_temperature, deadline=job.deadline,
            what="the LLM annotation",
        )
        if validated is None:
            return AnnotationResult(ok=False, error=f"no valid annotation after {attempts} attempt(s): {error}",
                                    usage=usage, attempts=attempts)
        return AnnotationResult(ok=True, reasons=validated.reasons, usage=usage, attempts=attempts)

    def close(self) -> None:
        self.chat.close()


@dataclass(frozen=True)
class LlmOptions:
    """The llm backend's flags, parsed (`leap teacher serve --backend llm ...`)."""

    endpoint: str = ""
    model: str = ""
    api_key: str = ""
    device: str = ""
    settings: LlmSettings = LlmSettings()
    pricing: Pricing = Pricing()


def add_arguments(parser) -> None:
    from services.runtime.config import env_default
    from services.runtime.numbers import finite_float

    defaults = LlmSettings()
    llm = parser.add_argument_group("llm backend")
    llm.add_argument("--llm-endpoint", default=env_default("llm-endpoint", ""),
                     help="TGI or OpenAI-compatible base URL (http://host:port); empty: a local model "
                          "[LEAP_LLM_ENDPOINT]")
    llm.add_argument("--llm-model", default=env_default("llm-model", ""),
                     help="model id sent to the endpoint (servers pinned to one model need it; else asked via "
                          "/v1/models), or the local model: a folder, a hub id, 'smollm2' [LEAP_LLM_MODEL]")
    llm.add_argument("--llm-api-key-file", default=env_default("llm-api-key-file", ""),
                     help="file holding the endpoint's API key; else $LEAP_LLM_API_KEY, $OPENAI_API_KEY or "
                          "$HF_TOKEN [LEAP_LLM_API_KEY_FILE]")
    llm.add_argument("--llm-device", default=env_default("llm-device", ""),
                     help="device of a local model: cpu, cuda, auto [LEAP_LLM_DEVICE]")
    llm.add_argument("--max-new-tokens", type=int, default=env_default("max-new-tokens", defaults.max_new_tokens),
                     help="largest answer per LLM call [LEAP_MAX_NEW_TOKENS]")
    llm.add_argument("--max-retries", type=int, default=env_default("max-retries", defaults.default_max_retries),
                     help="retries after an invalid answer, when the request does not say [LEAP_MAX_RETRIES]")
    llm.add_argument("--temperature", type=finite_float,
                     default=env_default("temperature", defaults.default_temperature),
                     help="sampling temperature when the request does not say (0: greedy) [LEAP_TEMPERATURE]")
    llm.add_argument("--price-prompt-per-1k", type=finite_float, default=env_default("price-prompt-per-1k", 0.0),
                     help="US dollars per 1000 prompt tokens, for cost accounting [LEAP_PRICE_PROMPT_PER_1K]")
    llm.add_argument("--price-completion-per-1k", type=finite_float,
                     default=env_default("price-completion-per-1k", 0.0),
                     help="US dollars per 1000 completion tokens [LEAP_PRICE_COMPLETION_PER_1K]")


def from_args(args) -> LlmOptions:
    from services.teacher.config import read_api_key

    return LlmOptions(
        endpoint=args.llm_endpoint, model=args.llm_model, api_key=read_api_key(args.llm_api_key_file),
        device=args.llm_device,
        settings=LlmSettings(max_new_tokens=args.max_new_tokens, default_temperature=args.temperature,
                             default_max_retries=args.max_retries),
        pricing=Pricing(args.price_prompt_per_1k, args.price_completion_per_1k),
    )


def create(options: LlmOptions | None, config=None) -> LlmTeacher:
    """`options.endpoint` (TGI / OpenAI-compatible) when given, else the local transformers model
    `options.model` (a folder, a hub id, or the `smollm2` alias)."""
    from services.teacher.backends.chat import EndpointChatModel, LocalChatModel

    options = options or LlmOptions()
    if options.endpoint:
        chat = EndpointChatModel(options.endpoint, model=options.model, api_key=options.api_key,
                                 timeout_s=options.settings.request_timeout_s)
    else:
        chat = LocalChatModel(options.model or "smollm2", device=options.device or None)
    return LlmTeacher(chat, settings=options.settings, pricing=options.pricing)


def launch_args(teacher) -> list[str]:
    """The flags `leap run` passes from its config's teacher section."""
    return ["--llm-endpoint", teacher.llm_endpoint, "--llm-model", teacher.llm_model]


SPEC = BackendSpec(name="llm", help="a chat model (an endpoint, or a local transformers model)",
                   create=create, add_arguments=add_arguments, from_args=from_args, launch_args=launch_args)

__all__ = ["SPEC", "LlmOptions", "LlmSettings", "LlmTeacher", "Pricing", "VISIBLE_PRIVILEGED"]
