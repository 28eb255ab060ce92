"""`leap env serve | tasks | play`.

    leap env serve --env household --port 50051 [--privileged-token T | --privileged-token-file F]
    leap env tasks --env household --split valid_seen [--limit 20] [--addr HOST:PORT]
    leap env play  --env household --seed 7 [--split train] [--privileged] [--addr HOST:PORT]

`tasks` and `play` run the environment in-process by default (nothing to start first); with --addr
they talk to a running server instead (`play --privileged` then needs the token as well). `play`
shows the observation and numbered candidates; type a number, or any action text; `q` quits.
With --privileged it also shows what the teacher would see: the privileged state (essential objects,
critical locations, optimal actions, facts, secrets) and what each expert would do next, and why.

Nothing heavy is imported at module level (this module is imported by the `leap` dispatcher).
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PORT = 50051


def _add_env_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="household", help="environment backend (default household)")
    p.add_argument("-o", "--env-option", action="append", default=[], metavar="[ENV:]KEY=VALUE",
                   help="backend option, e.g. train_tasks=500 or household:max_receptacles=12 (repeatable; "
                        "in-process only)")


def _parse_options(items: list[str], envs: list[str]) -> dict[str, dict[str, str]]:
    options: dict[str, dict[str, str]] = {env: {} for env in envs}
    for item in items:
        key_part, sep, value = item.partition("=")
        scope, _, key = key_part.rpartition(":")
        if not sep or not key.strip():
            raise SystemExit(f"error: --env-option wants [ENV:]KEY=VALUE, got {item!r}")
        scope = scope.strip()
        targets = [scope] if scope else envs
        for env in targets:
            if env not in options:
                raise SystemExit(f"error: --env-option {item!r} names {env!r}, which is not served (--env)")
            options[env][key.strip()] = value.strip()
    return options


def configure(parser: argparse.ArgumentParser) -> None:
    from services.runtime.config import add_server_arguments, env_default

    sub = parser.add_subparsers(dest="env_command", metavar="SUBCOMMAND")

    serve = sub.add_parser("serve", help="serve EnvironmentService (+ PrivilegedService with a token)")
    serve.add_argument("--env", action="append", default=None, metavar="NAME",
                       help="backend to host (repeatable; default household) [LEAP_ENV, comma-separated]")
    serve.add_argument("-o", "--env-option", action="append", default=[], metavar="[ENV:]KEY=VALUE",
                       help="backend option, e.g. household:train_tasks=500 (repeatable)")
    serve.add_argument("--privileged-token", default=None,
                       help="bearer token that PrivilegedService demands; without any token it is not served "
                            "[LEAP_PRIVILEGED_TOKEN]")
    serve.add_argument("--privileged-token-file", default=None,
                       help="read the token from this file (a mounted Kubernetes Secret) [LEAP_PRIVILEGED_TOKEN_FILE]")
    serve.add_argument("--privileged-port", type=int, default=env_default("privileged-port", 0),
                       help="serve PrivilegedService on its own port (conventionally 50052); 0 = on the same "
                            "server as EnvironmentService [LEAP_PRIVILEGED_PORT]")
    serve.add_argument("--max-sessions", type=int, default=env_default("max-sessions", 1024),
                       help="open sessions before Reset answers RESOURCE_EXHAUSTED [LEAP_MAX_SESSIONS]")
    serve.add_argument("--session-ttl", type=float, default=env_default("session-ttl", 900.0),
                       help="seconds of idleness after which a session is closed [LEAP_SESSION_TTL]")
    add_server_arguments(serve, DEFAULT_PORT)
    serve.set_defaults(func=cmd_serve)

    tasks = sub.add_parser("tasks", help="list the tasks of a split")
    _add_env_arguments(tasks)
    tasks.add_argument("--split", default="train")
    tasks.add_argument("--offset", type=int, default=0)
    tasks.add_argument("--limit", type=int, default=20, help="tasks to show (0 = all)")
    tasks.add_argument("--addr", default="", help="a running server (default: in-process)")
    tasks.set_defaults(func=cmd_tasks)

    play = sub.add_parser("play", help="play a task in the terminal")
    _add_env_arguments(play)
    play.add_argument("--split", default="train")
    play.add_argument("--seed", type=int, default=0, help="task index in the split (wraps around)")
    play.add_argument("--task-id", default="", help="play this task instead of --split/--seed")
    play.add_argument("--horizon", type=int, default=0, help="maximum actions (0 = the environment's default)")
    play.add_argument("--privileged", action="store_true", help="also show what the teacher would see")
    play.add_argument("--addr", default="", help="a running server (default: in-process)")
    play.add_argument("--privileged-token", default=None,
                      help="token for --privileged with --addr [LEAP_PRIVILEGED_TOKEN]")
    play.add_argument("--privileged-token-file", default=None, help="[LEAP_PRIVILEGED_TOKEN_FILE]")
    play.set_defaults(func=cmd_play)


# --- serve ----------------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from services.environment.server import EnvironmentServer, make_backends, read_token
    from services.runtime.config import ServerConfig
    from services.runtime.errors import ServiceError
    from services.runtime.logs import configure_logging

    config = ServerConfig.from_args(args)
    envs = args.env or [e.strip() for e in os.environ.get("LEAP_ENV", "household").split(",") if e.strip()]
    try:
        token = read_token(args.privileged_token, args.privileged_token_file, os.environ)
        backends = make_backends(envs, _parse_options(args.env_option, envs))
    except (ValueError, ServiceError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    if args.privileged_port and args.privileged_port == args.port:
        print("error: --privileged-port must differ from --port (or be 0 for the same server)", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    log = logging.getLogger("leap.environment")
    server = EnvironmentServer(config, backends, token=token, privileged_port=args.privileged_port or None,
                               max_sessions=args.max_sessions, idle_ttl_s=args.session_ttl)
    server.start()
    log.info("environment service ready", extra={"envs": ",".join(envs), "port": server.port,
                                                 "privileged_port": server.privileged_port or 0})
    server.wait()
    return 0


# --- in-process or remote access for tasks / play --------------------------------------------------------

class _Local:
    """The service logic in this process, answering with the same protobuf messages as a server."""

    def __init__(self, env: str, options: dict[str, str]):
        from services.environment import convert
        from services.environment.server import make_backends
        from services.environment.service import EnvironmentSessions, PrivilegedOracle

        self.convert = convert
        backends = make_backends([env], {env: options})
        self.sessions = EnvironmentSessions(backends, max_sessions=4)
        self.oracle = PrivilegedOracle(backends)

    def tasks(self, env: str, split: str):
        token = ""
        while True:
            page = self.sessions.list_tasks(env, split, 1000, token)
            for task in page.tasks:
                yield self.convert.task_info(env, task)
            token = page.next_page_token
            if not token:
                return

    def reset(self, env, task_id, split, seed, horizon):
        from leap.v1 import environment_pb2 as pb

        r = self.sessions.reset(env, task_id, split, seed, horizon)
        return pb.ResetResponse(session_id=r.session_id, task=self.convert.task_info(env, r.task),
                                observation=self.convert.observation(r.observation))

    def step(self, session_id, action):
        return self.convert.observation(self.sessions.step(session_id, action))

    def close(self, session_id):
        self.sessions.close(session_id)

    def privileged(self, task, actions):
        info = self.oracle.privileged_state(task.env, task.task_id, task.split, actions)
        return self.convert.privileged_state(task.env, info)

    def expert(self, task, actions, expert):
        advice = self.oracle.expert_advice(task.env, task.task_id, task.split, actions, expert)
        return self.convert.expert_actions(advice)

    def shutdown(self):
        self.sessions.stop()


class _Remote:
    def __init__(self, addr: str, token: str | None):
        from services.environment.client import EnvironmentClient, PrivilegedClient

        self.env = EnvironmentClient(addr)
        self.priv = PrivilegedClient(addr, token, channel=self.env.channel) if token else None

    def tasks(self, env, split):
        return self.env.list_tasks(env, split)

    def reset(self, env, task_id, split, seed, horizon):
        return self.env.reset(env, task_id=task_id, split=split, seed=seed, horizon=horizon)

    def step(self, session_id, action):
        return self.env.step(session_id, action)

    def close(self, session_id):
        self.env.close_session(session_id)

    def _need_token(self):
        if self.priv is None:
            raise SystemExit("error: --privileged with --addr needs --privileged-token or LEAP_PRIVILEGED_TOKEN")
        return self.priv

    def privileged(self, task, actions):
        return self._need_token().privileged_state(task, actions)

    def expert(self, task, actions, expert):
        return self._need_token().expert_actions(task, actions, expert)

    def shutdown(self):
        self.env.close()


def _access(args: argparse.Namespace, token: str | None = None):
    if args.addr:
        return _Remote(args.addr, token)
    return _Local(args.env, _parse_options(args.env_option, [args.env]).get(args.env, {}))


def _errors():
    import grpc

    from services.runtime.errors import ServiceError

    return grpc.RpcError, ServiceError


def _error_text(exc: BaseException) -> str:
    if hasattr(exc, "details") and callable(exc.details):
        return f"{exc.code().name}: {exc.details()}"
    return getattr(exc, "message", str(exc))


# --- tasks ----------------------------------------------------------------------------------------------

def cmd_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    access = _access(args)
    try:
        table = Table(title=f"{args.env} / {args.split}")
        table.add_column("task id", style="cyan", no_wrap=True)
        table.add_column("type", style="magenta")
        table.add_column("goal")
        shown = 0
        for i, info in enumerate(access.tasks(args.env, args.split)):
            if i < args.offset:
                continue
            if args.limit and shown >= args.limit:
                break
            table.add_row(info.task.task_id, info.task_type, info.goal)
            shown += 1
        console.print(table)
    except _errors() as exc:
        console.print(f"[red]error:[/red] {_error_text(exc)}")
        return 1
    finally:
        access.shutdown()
    return 0


# --- play -----------------------------------------------------------------------------------------------

def _show_privileged(console, access, task, actions: list[str]) -> None:
    from rich.panel import Panel

    state = access.privileged(task, actions)
    lines = [
        f"[b]essential objects[/b]: {', '.join(state.essential_objects) or '-'}",
        f"[b]critical locations[/b]: {', '.join(state.critical_locations) or '-'}",
        f"[b]optimal actions[/b] ({len(state.optimal_actions)}): {' ; '.join(state.optimal_actions) or '-'}",
        f"[b]facts[/b]: {' ; '.join(state.facts) or '-'}",
        f"[b]secrets[/b] (unobserved): {' ; '.join(state.secrets) or '-'}",
    ]
    for expert in ("planner", "prior_searcher", "searcher"):
        advice = access.expert(task, actions, expert)
        if advice.next_action:
            lines.append(f"[b]{expert}[/b] -> {advice.next_action}  [dim]{advice.rationale}[/dim]")
    console.print(Panel("\n".join(lines), title="what the teacher sees", border_style="yellow"))


def cmd_play(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from services.environment.server import read_token

    console = Console()
    token = None
    if args.privileged and args.addr:
        try:
            token = read_token(args.privileged_token, args.privileged_token_file, os.environ)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 2
    access = _access(args, token)
    rpc_errors = _errors()
    session_id = ""
    try:
        reset = access.reset(args.env, args.task_id, "" if args.task_id else args.split, args.seed, args.horizon)
        session_id = reset.session_id
        task = reset.task.task
        console.print(f"[b]{task.task_id}[/b] ({reset.task.task_type})")
        obs = reset.observation
        actions: list[str] = []
        while True:
            console.print(f"\n{escape(obs.text)}")
            if obs.done:
                break
            if args.privileged:
                _show_privileged(console, access, task, actions)
            for i, candidate in enumerate(obs.candidates, 1):
                console.print(f"  [cyan]{i:>2}[/cyan] {escape(candidate)}")
            try:
                answer = input("> ").strip()
            except EOFError:
                answer = "q"
            if answer in ("q", "quit", "exit"):
                break
            if not answer:
                continue
            action = obs.candidates[int(answer) - 1] if answer.isdigit() and 0 < int(answer) <= len(obs.candidates) \
                else answer
            try:
                obs = access.step(session_id, action)
            except rpc_errors as exc:
                console.print(f"[red]{escape(_error_text(exc))}[/red]")
                continue
            actions.append(action)
        verdict = "[green]won[/green]" if obs.won else "[red]horizon reached[/red]" if obs.truncated else "stopped"
        console.print(f"\n{verdict} after {obs.step} steps (score {obs.score:g})")
    except rpc_errors as exc:
        console.print(f"[red]error:[/red] {escape(_error_text(exc))}")
        return 1
    finally:
        if session_id:
            try:
                access.close(session_id)
            except rpc_errors:
                pass
        access.shutdown()
    return 0
