"""`leap teacher serve | correct`.

    leap teacher serve --backend oracle --env-addr localhost:50052 --privileged-token-file /run/token
    leap teacher correct --trajectory failed.jsonl --env-addr localhost:50052 --level 50
    leap teacher correct --trajectory episode.json --addr localhost:50071          # a running teacher

`correct` runs the teacher in this process and talks only to the environment service, so a person
can try the teacher with nothing else running; with --addr it asks a running teacher instead (which
holds the privileged token itself). `leap env play --save FILE` writes a file it reads.
Errors end as one line on stderr: exit code 2 for a bad input, 1 for anything else.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    from services.runtime.config import add_server_arguments
    from services.runtime.tls import add_client_tls_arguments
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
                                         "teacher that talks to the environment service only (--env-addr), or "
                                         "with a running teacher (--addr).")
    correct.add_argument("--trajectory", required=True, help="a Trajectory as JSON, a JSON list, or JSONL")
    correct.add_argument("--level", type=int, choices=LEVELS, default=DEFAULT_LEVEL,
                         help=f"realizability level (default {DEFAULT_LEVEL})")
    correct.add_argument("--json", action="store_true", help="print one JSON Correction per line instead of tables")
    correct.add_argument("--addr", default="",
                         help="a running teacher (host:port); then --env-addr, the token and the backend flags "
                              "are the server's business and not used here")
    correct.add_argument("--timeout", type=float, default=600.0, help="seconds per Correct call with --addr")
    add_client_tls_arguments(correct)
    add_teacher_arguments(correct, env_addr_required=True)
    correct.set_defaults(func=_correct)


def _serve(args: argparse.Namespace) -> int:
    from services.runtime.config import ServerConfig
    from services.runtime.server import serve_forever
    from services.teacher.config import TeacherConfig, build_service
    from services.teacher.server import NAME, registrations

    config = TeacherConfig.from_args(args)
    if not config.privileged_token:
        print("warning: no privileged token (--privileged-token, --privileged-token-file, LEAP_PRIVILEGED_TOKEN "
              "or LEAP_PRIVILEGED_TOKEN_FILE): the environment will refuse every privileged call", file=sys.stderr)
    service = build_service(config)
    # A backend with a slow start (a local model) loads after the server listens, NOT_SERVING until then.
    needs_loading = bool(getattr(service.backend, "needs_loading", False))

    def load_model(host) -> None:
        service.backend.load()
        host.set_serving(NAME, True)

    return serve_forever(ServerConfig.from_args(args), registrations(service, serving=not needs_loading),
                         label="teacher", on_start=load_model if needs_loading else None,
                         on_shutdown=[service.close])


class _RemoteTeacher:
    """A running teacher (its Correction messages as they come)."""

    def __init__(self, addr: str, timeout_s: float):
        from services.teacher.client import TeacherClient

        self.client = TeacherClient(addr, timeout_s=timeout_s)

    def correct(self, trajectory, level: int):
        return self.client.correct(trajectory, level=level)

    def close(self) -> None:
        self.client.close()


class _LocalTeacher:
    """A TeacherService in this process, answering with the same Correction messages as a server."""

    def __init__(self, args: argparse.Namespace):
        from services.teacher.config import TeacherConfig, build_service

        self.service = build_service(TeacherConfig.from_args(args))

    def correct(self, trajectory, level: int):
        from services.teacher.server import correction_to_proto

        return correction_to_proto(self.service.correct(trajectory, level=level))

    def close(self) -> None:
        self.service.close()


def _correct(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format
    from rich.console import Console

    from services.runtime.cli import UsageError, describe
    from services.runtime.errors import ServiceError, quote
    from services.runtime.tls import client_tls_from_args, configure_client_tls
    from services.teacher.trajectories import load_trajectories

    console = Console(stderr=False, soft_wrap=False)
    try:
        if not args.addr and not args.env_addr:
            raise UsageError("give --addr (a running teacher) or --env-addr (the environment's PrivilegedService, "
                             "for a teacher in this process) [LEAP_ENV_ADDR]")
        trajectories = load_trajectories(args.trajectory)
        configure_client_tls(client_tls_from_args(args))
        teacher = _RemoteTeacher(args.addr, args.timeout) if args.addr else _LocalTeacher(args)
    except (OSError, ValueError, UsageError) as exc:
        print(f"error: {describe(exc)[1]}", file=sys.stderr)
        return 2
    failures = bad_inputs = 0
    try:
        for number, trajectory in enumerate(trajectories, start=1):
            try:
                result = teacher.correct(trajectory, args.level)
            except (ServiceError, grpc.RpcError) as exc:
                exit_code, message = describe(exc)
                print(f"error: trajectory {number} ({quote(trajectory.task.task_id, 60) if trajectory.task.task_id else '?'}):"
                      f" {message}", file=sys.stderr)
                code = exc.code if isinstance(exc, ServiceError) else exc.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    return exit_code  # nothing else will work either
                failures += 1
                bad_inputs += exit_code == 2
                continue
            failures += 0 if result.ok else 1
            if args.json:
                print(json.dumps(json_format.MessageToDict(result), ensure_ascii=False))
            else:
                _print_correction(console, trajectory, result, number, len(trajectories))
    finally:
        teacher.close()
    return 2 if bad_inputs else 1 if failures else 0


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
