"""`leap teacher serve | correct`.

    leap teacher serve --backend oracle --env-addr localhost:50052 --privileged-token-file /run/token
    leap teacher correct --trajectory failed.jsonl --env-addr localhost:50052 --level 50

`correct` runs the teacher in this process and talks only to the environment service, so a person
can try the teacher with nothing else running. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    from services.runtime.config import add_server_arguments
    from services.teacher.config import DEFAULT_PORT, add_teacher_arguments
    from services.teacher.levels import DEFAULT_LEVEL, LEVELS

    sub = parser.add_subparsers(dest="teacher_command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve TeacherService over gRPC",
                           description=f"Serve the privileged teacher (default port {DEFAULT_PORT}).")
    add_teacher_arguments(serve)
    add_server_arguments(serve, default_port=DEFAULT_PORT)
    serve.set_defaults(func=_serve)

    correct = sub.add_parser("correct", help="correct trajectories from a file and print the corrections",
                             description="Correct the trajectories of a JSON / JSONL file with an in-process "
                                         "teacher that talks to the environment service only.")
    correct.add_argument("--trajectory", required=True, help="a Trajectory as JSON, a JSON list, or JSONL")
    correct.add_argument("--level", type=int, choices=LEVELS, default=DEFAULT_LEVEL,
                         help=f"realizability level (default {DEFAULT_LEVEL})")
    correct.add_argument("--json", action="store_true", help="print one JSON Correction per line instead of tables")
    add_teacher_arguments(correct, env_addr_required=True)
    correct.set_defaults(func=_correct)


def _serve(args: argparse.Namespace) -> int:
    from services.runtime.config import ServerConfig
    from services.runtime.server import serve_forever
    from services.teacher.backends.chat import LocalChatModel
    from services.teacher.config import TeacherConfig, build_service
    from services.teacher.server import NAME, registrations

    config = TeacherConfig.from_args(args)
    if not config.privileged_token:
        print("warning: no privileged token (--privileged-token, --privileged-token-file, LEAP_PRIVILEGED_TOKEN "
              "or LEAP_PRIVILEGED_TOKEN_FILE): the environment will refuse every privileged call", file=sys.stderr)
    service = build_service(config)
    chat = getattr(service.backend, "chat", None)
    needs_loading = isinstance(chat, LocalChatModel) and not chat.loaded

    def load_model(host) -> None:
        chat.load()
        host.set_serving(NAME, True)

    return serve_forever(ServerConfig.from_args(args), registrations(service, serving=not needs_loading),
                         label="teacher", on_start=load_model if needs_loading else None,
                         on_shutdown=[service.close])


def _correct(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from rich.console import Console

    from services.runtime.errors import ServiceError
    from services.teacher.config import TeacherConfig, build_service
    from services.teacher.server import correction_to_proto
    from services.teacher.trajectories import load_trajectories

    console = Console(stderr=False, soft_wrap=False)
    try:
        trajectories = load_trajectories(args.trajectory)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    service = build_service(TeacherConfig.from_args(args))
    failures = 0
    try:
        for number, trajectory in enumerate(trajectories, start=1):
            try:
                result = service.correct(trajectory, level=args.level)
            except ServiceError as exc:
                print(f"error: trajectory {number} ({trajectory.task.task_id or '?'}): "
                      f"{exc.code.name}: {exc.message}", file=sys.stderr)
                if exc.code.name in ("UNAVAILABLE", "FAILED_PRECONDITION"):
                    return 1
                failures += 1
                continue
            failures += 0 if result.ok else 1
            if args.json:
                print(json.dumps(json_format.MessageToDict(correction_to_proto(result)), ensure_ascii=False))
            else:
                _print_correction(console, trajectory, result, number, len(trajectories))
    finally:
        service.close()
    return 1 if failures else 0


def _print_correction(console, trajectory, result, number: int, total: int) -> None:
    from rich.table import Table

    title = (f"[{number}/{total}] {trajectory.task.env}/{trajectory.task.task_id}  {trajectory.goal}  "
             f"(teacher {result.teacher}, level {result.realizability_level})")
    if not result.ok:
        console.print(f"[bold]{title}[/bold]\n[red]no correction:[/red] {result.error}\n")
        return
    table = Table(title=title, show_lines=True, expand=False)
    table.add_column("t", justify="right")
    table.add_column("student action")
    table.add_column("teacher action")
    table.add_column("", justify="center")
    table.add_column("teacher reason", overflow="fold")
    for step in result.steps:
        mark = "[yellow]changed[/yellow]" if step.is_corrected else "[green]kept[/green]"
        table.add_row(str(step.index), step.original_action, step.action, mark, step.reason)
    console.print(table)
    console.print(f"[bold]summary:[/bold] {result.summary}")
    usage = result.usage
    if usage.calls:
        console.print(f"usage: {usage.calls} call(s), {usage.prompt_tokens} prompt + {usage.completion_tokens} "
                      f"completion tokens, ${usage.cost_usd:.4f}, {result.attempts} attempt(s)")
    console.print()
