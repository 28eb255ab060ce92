"""`leap env serve | tasks | play`.

    leap env serve --env household --port 50051 [--privileged-token T | --privileged-token-file F]
    leap env tasks --env household --split valid_seen [--limit 20] [--addr HOST:PORT]
    leap env export-alfworld --split valid_unseen --count 50 --out DIR   (household tasks as ALFWorld games)
    leap env play  --env household --seed 7 [--split train] [--privileged] [--addr HOST:PORT]
                   [--privileged-addr HOST:PORT] [--save episode.json]

`tasks` and `play` run the environment in-process by default (nothing to start first); with --addr
they talk to a running server instead (`play --privileged` then needs the token as well, and
--privileged-addr when PrivilegedService has its own port; --tls-ca etc. when the server speaks TLS).
`play` shows the observation and numbered candidates; type a number, or any action text; `q` quits.
With --privileged it also shows what the teacher would see: the privileged state (essential objects,
critical locations, optimal actions, facts, secrets) and what each expert would do next, and why.
With --save it writes the episode as a leap.v1.Trajectory (JSON) that `leap teacher correct
--trajectory FILE` reads.

Errors end as one line on stderr: exit code 2 for a bad input, 1 for anything else.

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
    from services.runtime.cli import UsageError

    options: dict[str, dict[str, str]] = {env: {} for env in envs}
    for item in items:
        key_part, sep, value = item.partition("=")
        scope, _, key = key_part.rpartition(":")
        if not sep or not key.strip():
            raise UsageError(f"--env-option wants [ENV:]KEY=VALUE, got {item!r}")
        scope = scope.strip()
        targets = [scope] if scope else envs
        for env in targets:
            if env not in options:
                raise UsageError(f"--env-option {item!r} names {env!r}, which is not served (--env)")
            options[env][key.strip()] = value.strip()
    return options


def configure(parser: argparse.ArgumentParser) -> None:
    from services.runtime.config import add_server_arguments, env_default
    from services.runtime.tls import add_client_tls_arguments

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
    add_client_tls_arguments(tasks)
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
    play.add_argument("--privileged-addr", default=env_default("privileged-addr", ""),
                      help="PrivilegedService's own address, when the server runs it on a separate port "
                           "(--privileged-port); default: --addr [LEAP_PRIVILEGED_ADDR]")
    play.add_argument("--save", default="", metavar="FILE",
                      help="write the episode to FILE as a leap.v1.Trajectory (JSON), for `leap teacher correct`")
    add_client_tls_arguments(play)
    play.set_defaults(func=cmd_play)

    export = sub.add_parser("export-alfworld", help="write household tasks as ALFWorld game folders")
    export.add_argument("--split", default="train", help="household split (train, valid_seen, valid_unseen)")
    export.add_argument("--count", type=int, default=50, help="tasks to export, from --start (default 50)")
    export.add_argument("--start", type=int, default=0, help="index of the first task (default 0)")
    export.add_argument("--out", required=True, metavar="DIR",
                        help="root folder; games go to DIR/<split>/<task>/<trial>/ (serve it with "
                             "-o alfworld:games=DIR)")
    export.set_defaults(func=cmd_export_alfworld)


# --- serve ----------------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from services.environment.server import EnvironmentServer, make_backends, read_token
    from services.runtime.cli import UsageError
    from services.runtime.config import ServerConfig
    from services.runtime.errors import ServiceError
    from services.runtime.logs import configure_logging

    config = ServerConfig.from_args(args)
    envs = args.env or [e.strip() for e in os.environ.get("LEAP_ENV", "household").split(",") if e.strip()]
    try:
        token = read_token(args.privileged_token, args.privileged_token_file, os.environ)
        config.server_tls()  # unreadable TLS files: a usage error before the backends are built
        backends = make_backends(envs, _parse_options(args.env_option, envs))
    except (ValueError, ServiceError, UsageError) as exc:
        return _fail(exc)
    if args.privileged_port and args.privileged_port == args.port:
        print("error: --privileged-port must differ from --port (or be 0 for the same server)", file=sys.stderr)
        return 2
    log = logging.getLogger("leap.environment")
    try:
        server = EnvironmentServer(config, backends, token=token, privileged_port=args.privileged_port or None,
                                   max_sessions=args.max_sessions, idle_ttl_s=args.session_ttl)
        configure_logging(config.log_level, config.log_format)  # once the settings are known to be good
        server.start()
    except (ValueError, OSError) as exc:  # a bad --max-sessions / --session-ttl, a port in use
        for backend in backends.values():
            backend.close()
        return _fail(exc)
    log.info("environment service ready", extra={"envs": ",".join(envs), "port": server.port,
                                                 "privileged_port": server.privileged_port or 0})
    server.wait()
    return 0


# --- export-alfworld ---------------------------------------------------------------------------------------

def cmd_export_alfworld(args: argparse.Namespace) -> int:
    """Household tasks as ALFWorld game folders (services/environment/backends/alfworld/export.py)."""
    from services.runtime.cli import UsageError

    splits = ("train", "valid_seen", "valid_unseen")
    if args.split not in splits:
        return _fail(UsageError(f"--split must be one of {', '.join(splits)}; got {args.split!r}"))
    if not 1 <= args.count <= 100_000 or not 0 <= args.start <= 1_000_000:
        return _fail(UsageError("--count must be between 1 and 100000 and --start between 0 and 1000000"))
    try:
        from services.environment.backends.alfworld.export import export_split

        result = export_split(args.out, args.split, args.count, start=args.start)
    except ModuleNotFoundError as exc:  # alfred.pddl, alfred.twl2 and the goals come from the alfworld package
        return _fail(UsageError(f"the alfworld extra is not installed ({exc}): pip install 'leap-serve[alfworld]'"))
    except (ValueError, OSError) as exc:
        return _fail(exc)
    print(f"{result.written} game folders written, {result.unchanged} already there, under "
          f"{os.path.join(args.out, args.split)}")
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
        return self.convert.privileged_state(task.env, info, self.oracle.experts(task.env))

    def expert(self, task, actions, expert):
        advice = self.oracle.expert_advice(task.env, task.task_id, task.split, actions, expert)
        return self.convert.expert_actions(advice)

    def shutdown(self):
        self.sessions.stop()


class _Remote:
    def __init__(self, addr: str, token: str | None, privileged_addr: str = ""):
        from services.environment.client import EnvironmentClient, PrivilegedClient

        self.env = EnvironmentClient(addr)
        self.priv = None
        if token and privileged_addr and privileged_addr != addr:
            self.priv = PrivilegedClient(privileged_addr, token)
        elif token:
            self.priv = PrivilegedClient(addr, token, channel=self.env.channel)

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
        if self.priv is not None:
            self.priv.close()
        self.env.close()


def _access(args: argparse.Namespace, token: str | None = None):
    from services.runtime.tls import client_tls_from_args, configure_client_tls

    if args.addr:
        configure_client_tls(client_tls_from_args(args))
        return _Remote(args.addr, token, getattr(args, "privileged_addr", ""))
    return _Local(args.env, _parse_options(args.env_option, [args.env]).get(args.env, {}))


def _errors():
    import grpc

    from services.runtime.errors import ServiceError

    return grpc.RpcError, ServiceError


def _error_text(exc: BaseException) -> str:
    if hasattr(exc, "details") and callable(exc.details):
        return f"{exc.code().name}: {exc.details()}"
    return getattr(exc, "message", str(exc))


def _fail(exc: BaseException) -> int:
    """One line on stderr and the exit code (2: a bad input) for an error that ends a command."""
    from services.runtime.cli import describe

    code, message = describe(exc) or (1, _error_text(exc))
    print(f"error: {message}", file=sys.stderr)
    return code


# --- tasks ----------------------------------------------------------------------------------------------

def cmd_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        access = _access(args)
    except _errors() as exc:
        return _fail(exc)
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
        return _fail(exc)
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
    from services.environment.client import EXPERTS

    offered = {kind for kind in state.experts}
    for expert in ("planner", "prior_searcher", "searcher"):
        if offered and EXPERTS[expert] not in offered:
            continue
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
    rpc_errors = _errors()
    from services.runtime.cli import UsageError

    if args.privileged_addr and not args.addr:
        return _fail(UsageError("--privileged-addr needs --addr (in-process play needs neither)"))
    try:
        if args.privileged and args.addr:
            token = read_token(args.privileged_token, args.privileged_token_file, os.environ)
        if args.save:
            _check_writable(args.save)
        access = _access(args, token)
    except (ValueError, OSError, UsageError, *rpc_errors) as exc:
        return _fail(exc)
    session_id = ""
    recorder = None
    try:
        reset = access.reset(args.env, args.task_id, "" if args.task_id else args.split, args.seed, args.horizon)
        session_id = reset.session_id
        task = reset.task.task
        console.print(f"[b]{task.task_id}[/b] ({reset.task.task_type})")
        obs = reset.observation
        recorder = _Recorder(reset) if args.save else None
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
                before, obs = obs, access.step(session_id, action)
            except rpc_errors as exc:
                console.print(f"[red]{escape(_error_text(exc))}[/red]")
                continue
            actions.append(action)
            if recorder is not None:
                recorder.step(before, action, obs)
        verdict = "[green]won[/green]" if obs.won else "[red]horizon reached[/red]" if obs.truncated else "stopped"
        console.print(f"\n{verdict} after {obs.step} steps (score {obs.score:g})")
        if recorder is not None:
            recorder.save(args.save, obs)
            console.print(f"saved the episode ({len(actions)} steps) to {escape(args.save)}")
    except rpc_errors as exc:
        return _fail(exc)
    finally:
        if session_id:
            try:
                access.close(session_id)
            except rpc_errors:
                pass
        access.shutdown()
    return 0


# --- --save: the episode as a trajectory file -----------------------------------------------------------

def _check_writable(path: str) -> None:
    """Fail before playing, not after, when the --save file cannot be written."""
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(target))
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(parent))
    if not os.access(parent, os.W_OK):
        raise PermissionError(13, "Permission denied", str(parent))


class _Recorder:
    """Builds the leap.v1.Trajectory of a played episode, step by step."""

    def __init__(self, reset):
        from leap.v1 import common_pb2

        self.trajectory = common_pb2.Trajectory(task=reset.task.task, goal=reset.task.goal,
                                                task_type=reset.task.task_type, agent="human")
        self.trajectory.metadata["source"] = "leap env play"

    def step(self, before, action: str, after) -> None:
        self.trajectory.steps.add(
            index=len(self.trajectory.steps), observation=before.text, candidates=list(before.candidates),
            action=action, reward=after.reward, action_valid=after.last_action_valid, next_observation=after.text)

    def save(self, path: str, last) -> None:
        from google.protobuf import json_format

        from services.runtime.files import atomic_write_text

        t = self.trajectory
        t.done, t.won, t.score, t.truncated = last.done, last.won, last.score, last.truncated
        atomic_write_text(path, json_format.MessageToJson(t, indent=2, ensure_ascii=False) + "\n")
