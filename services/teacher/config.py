"""The teacher's own settings: backend, environment address and token, limits; each backend's own
flags (the LLM endpoint, prices, ...) belong to the backend (services.teacher.backends).

Each flag has an environment variable (LEAP_<FLAG>), as every LEAP-serve flag does.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.runtime.config import env_default
from services.runtime.numbers import finite_float
from services.teacher import backends
from services.teacher.backends import DEFAULT_BACKEND
from services.teacher.service import DEFAULT_MAX_STEPS

DEFAULT_PORT = 50071
DEFAULT_ENV_ADDR = "127.0.0.1:50052"


@dataclass
class TeacherConfig:
    backend: str = DEFAULT_BACKEND
    env_addr: str = DEFAULT_ENV_ADDR
    privileged_token: str = ""
    env_timeout_s: float = 30.0
    max_steps: int = DEFAULT_MAX_STEPS
    #: What the backend's own flags parsed into (its spec's from_args); None: the backend's defaults.
    backend_options: Any = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TeacherConfig:
        return cls(
            backend=args.backend,
            env_addr=args.env_addr,
            privileged_token=read_token(args.privileged_token, args.privileged_token_file),
            env_timeout_s=args.env_timeout,
            max_steps=args.max_steps,
            backend_options=backends.spec(args.backend).from_args(args),
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
    """The teacher's flags (shared by `leap teacher serve` and `leap teacher correct`), then every
    registered backend's own flags."""
    g = parser.add_argument_group("teacher")
    g.add_argument("--backend", choices=backends.available(), default=env_default("backend", DEFAULT_BACKEND),
                   help="; ".join(f"{s.name}: {s.help}" for s in backends.specs()) + " [LEAP_BACKEND]")
    g.add_argument("--env-addr", default=env_default("env-addr", "" if env_addr_required else DEFAULT_ENV_ADDR),
                   help="the environment's PrivilegedService, host:port [LEAP_ENV_ADDR]")
    g.add_argument("--privileged-token", default=env_default("privileged-token", ""),
                   help="bearer token of the privileged service [LEAP_PRIVILEGED_TOKEN]")
    g.add_argument("--privileged-token-file", default=env_default("privileged-token-file", ""),
                   help="file holding the token (a mounted Secret) [LEAP_PRIVILEGED_TOKEN_FILE]")
    g.add_argument("--env-timeout", type=finite_float, default=env_default("env-timeout", 30.0),
                   help="seconds per call to the environment [LEAP_ENV_TIMEOUT]")
    g.add_argument("--max-steps", type=int, default=env_default("max-steps", DEFAULT_MAX_STEPS),
                   help="longest trajectory accepted [LEAP_MAX_STEPS]")
    for spec in backends.specs():
        spec.add_arguments(parser)


def build_service(config: TeacherConfig):
    """A TeacherService wired to the environment's PrivilegedService, as the config says."""
    from services.runtime.cli import UsageError
    from services.teacher.privileged import GrpcPrivilegedSource
    from services.teacher.service import TeacherService

    if config.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    backend = backends.create(config.backend, config.backend_options, config)
    source = GrpcPrivilegedSource(config.env_addr, config.privileged_token, timeout_s=config.env_timeout_s)
    return TeacherService(backend, source, max_steps=config.max_steps)
