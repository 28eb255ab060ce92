"""The teacher's own settings: backend, environment address and token, limits, LLM endpoint, prices.

Each flag has an environment variable (LEAP_<FLAG>), as every LEAP-serve flag does.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from services.runtime.config import env_default
from services.teacher.backends import BACKENDS
from services.teacher.service import DEFAULT_MAX_STEPS

DEFAULT_PORT = 50071
DEFAULT_ENV_ADDR = "127.0.0.1:50052"


@dataclass
class TeacherConfig:
    backend: str = "oracle"
    env_addr: str = DEFAULT_ENV_ADDR
    privileged_token: str = ""
    env_timeout_s: float = 30.0
    max_steps: int = DEFAULT_MAX_STEPS
    llm_endpoint: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_device: str = ""
    max_new_tokens: int = 1024
    max_retries: int = 2
    temperature: float = 0.0
    price_prompt_per_1k: float = 0.0
    price_completion_per_1k: float = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TeacherConfig:
        return cls(
            backend=args.backend,
            env_addr=args.env_addr,
            privileged_token=read_token(args.privileged_token, args.privileged_token_file),
            env_timeout_s=args.env_timeout,
            max_steps=args.max_steps,
            llm_endpoint=args.llm_endpoint,
            llm_model=args.llm_model,
            llm_api_key=read_api_key(args.llm_api_key_file),
            llm_device=args.llm_device,
            max_new_tokens=args.max_new_tokens,
            max_retries=args.max_retries,
            temperature=args.temperature,
            price_prompt_per_1k=args.price_prompt_per_1k,
            price_completion_per_1k=args.price_completion_per_1k,
        )


def read_token(value: str, file: str) -> str:
    """A secret from a flag value or, when that is empty, from a file (a mounted Kubernetes Secret).

    Whitespace around it is dropped (a file's trailing newline would make it an invalid metadata value)."""
    from services.runtime.cli import UsageError

    if value:
        return value.strip()
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise UsageError(f"token file {path} does not exist")
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return ""


# Where the LLM endpoint's API key may come from, after --llm-api-key-file (first one set wins).
API_KEY_VARIABLES = ("LEAP_LLM_API_KEY", "OPENAI_API_KEY", "HF_TOKEN")


def read_api_key(file: str) -> str:
    """The endpoint's API key: --llm-api-key-file, else $LEAP_LLM_API_KEY, $OPENAI_API_KEY, $HF_TOKEN."""
    if file:
        return read_token("", file)
    return next((os.environ[name].strip() for name in API_KEY_VARIABLES if os.environ.get(name, "").strip()), "")


def add_teacher_arguments(parser: argparse.ArgumentParser, *, env_addr_required: bool = False) -> None:
    """The teacher's flags (shared by `leap teacher serve` and `leap teacher correct`)."""
    g = parser.add_argument_group("teacher")
    g.add_argument("--backend", choices=BACKENDS, default=env_default("backend", "oracle"),
                   help="oracle: the environment's experts (exact, free); llm: a chat model [LEAP_BACKEND]")
    g.add_argument("--env-addr", default=env_default("env-addr", "" if env_addr_required else DEFAULT_ENV_ADDR),
                   help="the environment's PrivilegedService, host:port [LEAP_ENV_ADDR]")
    g.add_argument("--privileged-token", default=env_default("privileged-token", ""),
                   help="bearer token of the privileged service [LEAP_PRIVILEGED_TOKEN]")
    g.add_argument("--privileged-token-file", default=env_default("privileged-token-file", ""),
                   help="file holding the token (a mounted Secret) [LEAP_PRIVILEGED_TOKEN_FILE]")
    g.add_argument("--env-timeout", type=float, default=env_default("env-timeout", 30.0),
                   help="seconds per call to the environment [LEAP_ENV_TIMEOUT]")
    g.add_argument("--max-steps", type=int, default=env_default("max-steps", DEFAULT_MAX_STEPS),
                   help="longest trajectory accepted [LEAP_MAX_STEPS]")
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
    llm.add_argument("--max-new-tokens", type=int, default=env_default("max-new-tokens", 1024),
                     help="largest answer per LLM call [LEAP_MAX_NEW_TOKENS]")
    llm.add_argument("--max-retries", type=int, default=env_default("max-retries", 2),
                     help="retries after an invalid answer, when the request does not say [LEAP_MAX_RETRIES]")
    llm.add_argument("--temperature", type=float, default=env_default("temperature", 0.0),
                     help="sampling temperature when the request does not say (0: greedy) [LEAP_TEMPERATURE]")
    llm.add_argument("--price-prompt-per-1k", type=float, default=env_default("price-prompt-per-1k", 0.0),
                     help="US dollars per 1000 prompt tokens, for cost accounting [LEAP_PRICE_PROMPT_PER_1K]")
    llm.add_argument("--price-completion-per-1k", type=float, default=env_default("price-completion-per-1k", 0.0),
                     help="US dollars per 1000 completion tokens [LEAP_PRICE_COMPLETION_PER_1K]")


def build_service(config: TeacherConfig):
    """A TeacherService wired to the environment's PrivilegedService, as the config says."""
    from services.teacher.backends import make_backend
    from services.teacher.backends.llm import LlmSettings, Pricing
    from services.teacher.privileged import GrpcPrivilegedSource
    from services.teacher.service import TeacherService

    from services.runtime.cli import UsageError

    if config.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    settings = LlmSettings(max_new_tokens=config.max_new_tokens, default_temperature=config.temperature,
                           default_max_retries=config.max_retries)
    backend = make_backend(config.backend, llm_endpoint=config.llm_endpoint, llm_model=config.llm_model,
                           llm_api_key=config.llm_api_key, llm_device=config.llm_device or None,
                           settings=settings,
                           pricing=Pricing(config.price_prompt_per_1k, config.price_completion_per_1k))
    source = GrpcPrivilegedSource(config.env_addr, config.privileged_token, timeout_s=config.env_timeout_s)
    return TeacherService(backend, source, max_steps=config.max_steps)
