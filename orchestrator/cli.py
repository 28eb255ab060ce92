"""`leap`: one command line for every service and for the LEAP run.

    leap env serve | tasks | play      (services.environment.cli)
    leap student serve                 (services.student.cli)
    leap teacher serve | correct       (services.teacher.cli)
    leap trainer serve                 (services.trainer.cli)
    leap run | report                  (orchestrator.commands)

Each group lives with its service and is imported only when used, so `leap env serve` never
imports torch. Every command ends an error with one line on stderr, never a traceback: exit code 2 for
a bad input, 1 for another failure (services.runtime.cli).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module, help). Each module exposes `configure(parser)`; the parser's `func` runs it.
COMMAND_GROUPS: list[tuple[str, str, str]] = [
    ("env", "services.environment.cli", "environment service: serve, list tasks, play"),
    ("student", "services.student.cli", "student inference service"),
    ("teacher", "services.teacher.cli", "privileged teacher service"),
    ("trainer", "services.trainer.cli", "trainer service (LoRA SFT / DPO / KTO jobs)"),
]
RUN_COMMANDS = "orchestrator.commands"


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leap", description="LEAP-serve: LLM agents that learn from privileged AI feedback.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, module, help_text in COMMAND_GROUPS:
        group = sub.add_parser(name, help=help_text)
        # Only import the module of the group actually used (keeps torch out of unrelated commands).
        if wanted in (name, None, "-h", "--help"):
            mod = _load(module)
            if mod is not None:
                mod.configure(group)
    run_mod = _load(RUN_COMMANDS)
    if run_mod is not None:
        run_mod.configure(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # A group without a subcommand: print that group's help.
        parser.parse_args(argv + ["--help"])
        return 2
    from services.runtime.cli import run_command

    return run_command(lambda: func(args))


if __name__ == "__main__":
    sys.exit(main())
