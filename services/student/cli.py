"""`leap student serve`: run the student inference service.

Nothing heavy is imported here: torch (local backend) is imported only when `serve` runs.
"""

from __future__ import annotations

import argparse

from services.runtime.config import add_server_arguments, env_default
from services.student.defaults import (
    DEFAULT_HISTORY_WINDOW,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_PREFILL_ROWS,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS,
    DEFAULT_PROMPT_CACHE_MB,
)

DEFAULT_PORT = 50061


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `leap student` subcommands to `parser`."""
    sub = parser.add_subparsers(dest="student_command", metavar="SUBCOMMAND")
    serve = sub.add_parser("serve", help="serve leap.v1.StudentService (batched acting, LoRA hot swap)",
                           description="Serve the student policy over gRPC. Every flag can also be set as "
                                       "LEAP_<FLAG> (e.g. LEAP_MODEL, LEAP_MAX_BATCH_SIZE).")
    add_student_arguments(serve)
    add_server_arguments(serve, DEFAULT_PORT)
    serve.set_defaults(func=run_serve)


def add_student_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("student")
    g.add_argument("--backend", choices=["local", "tgi", "openai"], default=env_default("backend", "local"),
                   help="local: transformers + peft in this process; tgi / openai: a remote inference server "
                        "[LEAP_BACKEND]")
    g.add_argument("--model", default=env_default("model", "smollm2"),
                   help="'smollm2' (default, offline), a local model folder or a hub id. With a remote backend: "
                        "where the tokenizer and chat template come from [LEAP_MODEL]")
    g.add_argument("--device", default=env_default("device", "auto"),
                   help="auto, cpu, cuda, cuda:1 ... (local backend) [LEAP_DEVICE]")
    g.add_argument("--dtype", default=env_default("dtype", "auto"),
                   choices=["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"],
                   help="auto: bf16 (or fp16) on GPU, bf16 on CPUs with AMX, else fp32 [LEAP_DTYPE]")
    g.add_argument("--endpoint", default=env_default("endpoint", ""),
                   help="base URL of the remote server, e.g. http://tgi:80 (tgi / openai backends) [LEAP_ENDPOINT]")
    g.add_argument("--remote-model", default=env_default("remote-model", ""),
                   help="model name sent to an OpenAI-compatible server (default: the resolved --model) "
                        "[LEAP_REMOTE_MODEL]")
    g.add_argument("--request-timeout", type=float, default=env_default("request-timeout", 120.0),
                   help="seconds per remote HTTP request [LEAP_REQUEST_TIMEOUT]")
    g.add_argument("--retries", type=int, default=env_default("retries", 3),
                   help="retries of a remote request on 429 / 5xx / connection errors [LEAP_RETRIES]")
    g.add_argument("--max-batch-size", type=int, default=env_default("max-batch-size", DEFAULT_MAX_BATCH_SIZE),
                   help="rows per forward pass (local backend) or concurrent requests (remote); concurrent "
                        "Act calls share batches, so keep --act-workers at least this large [LEAP_MAX_BATCH_SIZE]")
    g.add_argument("--max-prefill-rows", type=int, default=env_default("max-prefill-rows", DEFAULT_MAX_PREFILL_ROWS),
                   help="rows prefilled together; the rest of a wide batch joins over the next steps (0: no limit) "
                        "[LEAP_MAX_PREFILL_ROWS]")
    g.add_argument("--prefill-group-overhead-tokens", type=int,
                   default=env_default("prefill-group-overhead-tokens", None),
                   help="newcomers of uneven lengths are prefilled in separate passes when that saves more padding "
                        "than a pass costs, counted in tokens (-1: always one pass; default: "
                        f"{DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS} on a CPU, one pass on a GPU) "
                        "[LEAP_PREFILL_GROUP_OVERHEAD_TOKENS]")
    g.add_argument("--max-wait-ms", type=float, default=env_default("max-wait-ms", float(DEFAULT_MAX_WAIT_MS)),
                   help="how long a queued row waits for companions before its batch starts [LEAP_MAX_WAIT_MS]")
    g.add_argument("--history-window", type=int, default=env_default("history-window", DEFAULT_HISTORY_WINDOW),
                   help="past (observation, action) turns shown in the prompt; use the same value for training "
                        "data [LEAP_HISTORY_WINDOW]")
    g.add_argument("--max-prompt-tokens", type=int, default=env_default("max-prompt-tokens", 2048),
                   help="longer prompts are refused with INVALID_ARGUMENT [LEAP_MAX_PROMPT_TOKENS]")
    g.add_argument("--max-items", type=int, default=env_default("max-items", 64),
                   help="items accepted in one Act call [LEAP_MAX_ITEMS]")
    g.add_argument("--max-new-tokens", type=int, default=env_default("max-new-tokens", 64),
                   help="default completion length when a request gives none [LEAP_MAX_NEW_TOKENS]")
    g.add_argument("--max-new-tokens-limit", type=int, default=env_default("max-new-tokens-limit", 512),
                   help="largest max_new_tokens a request may ask for [LEAP_MAX_NEW_TOKENS_LIMIT]")
    g.add_argument("--max-adapters", type=int, default=env_default("max-adapters", 3),
                   help="LoRA adapters kept loaded (current and previous are always kept) [LEAP_MAX_ADAPTERS]")
    g.add_argument("--adapters-root", "--checkpoint-root", dest="adapters_root",
                   default=env_default("adapters-root", env_default("checkpoint-root", "runs")),
                   help="the only folder LoadAdapter reads checkpoints from (the shared runs volume): relative "
                        "URIs are taken from it, absolute ones and symlinks must stay in it (default: ./runs; "
                        "`leap run` passes its run directory; --checkpoint-root is the former name) "
                        "[LEAP_ADAPTERS_ROOT]")
    g.add_argument("--max-adapter-mb", type=float, default=env_default("max-adapter-mb", 2048.0),
                   help="largest adapter weights file LoadAdapter reads, in MiB [LEAP_MAX_ADAPTER_MB]")
    g.add_argument("--act-workers", type=int, default=env_default("act-workers", 64),
                   help="Act calls handled at once, on threads of their own (more wait in line); health and "
                        "control calls keep the --max-workers threads [LEAP_ACT_WORKERS]")
    g.add_argument("--health-interval", type=float, default=env_default("health-interval", 10.0),
                   help="tgi / openai: seconds between probes of the remote server while serving; the "
                        "service reports NOT_SERVING while they fail (0: no probes) [LEAP_HEALTH_INTERVAL]")
    g.add_argument("--desired-adapter-file", default=env_default("desired-adapter-file", ""),
                   help="a desired-adapter record (JSON; on Kubernetes the mounted leap-student-desired-adapter "
                        "ConfigMap): the adapter it names is loaded before the server reports SERVING, and "
                        "followed when it changes (services.student.desired_adapter) [LEAP_DESIRED_ADAPTER_FILE]")
    g.add_argument("--desired-adapter-poll-seconds", type=float, default=env_default("desired-adapter-poll-seconds", 2.0),
                   help="how often the desired-adapter record is read again [LEAP_DESIRED_ADAPTER_POLL_SECONDS]")
    g.add_argument("--stop-at", choices=["action", "eos"], default=env_default("stop-at", "action"),
                   help="stop each row at the end of its ACTION line (default) or only at eos / the token "
                        "limit [LEAP_STOP_AT]")
    g.add_argument("--prefix-cache", choices=["on", "off"], default=env_default("prefix-cache", "on"),
                   help="keep the KV cache of the shared system message per adapter and prefill only the rest of "
                        "each prompt (local backend) [LEAP_PREFIX_CACHE]")
    g.add_argument("--prompt-cache-mb", type=int, default=env_default("prompt-cache-mb", DEFAULT_PROMPT_CACHE_MB),
                   help="with --prefix-cache on: keep each prefilled prompt's KV (up to this many MiB, least recently "
                        "used dropped) and prefill a later prompt only past its longest common prefix with one of "
                        "them; 0: the system message only. A client can time whether a prefix was seen before: "
                        "use 0 where clients must not learn about each other's prompts (local backend) "
                        "[LEAP_PROMPT_CACHE_MB]")
    g.add_argument("--merge-adapter", choices=["on", "off"], default=env_default("merge-adapter", "on"),
                   help="run a forward pass whose rows all use one adapter on base weights with that adapter merged "
                        "in; off: peft's unmerged LoRA path (local backend) [LEAP_MERGE_ADAPTER]")


def build_service(args: argparse.Namespace):
    """The StudentService described by parsed flags (imports the chosen backend)."""
    from services.student.service import StudentLimits, StudentService

    limits = StudentLimits(history_window=args.history_window, max_prompt_tokens=args.max_prompt_tokens,
                           max_items=args.max_items, default_max_new_tokens=args.max_new_tokens,
                           max_new_tokens_limit=args.max_new_tokens_limit, max_adapters=args.max_adapters,
                           act_workers=args.act_workers)
    if args.act_workers < 1:
        raise SystemExit("--act-workers must be at least 1")
    if args.prompt_cache_mb < 0:
        raise SystemExit("--prompt-cache-mb must be 0 (off) or more")
    if args.prefill_group_overhead_tokens is not None and args.prefill_group_overhead_tokens < -1:
        raise SystemExit("--prefill-group-overhead-tokens must be -1 (one pass), 0 or more")
    if args.backend == "local":
        from services.student.backends.local import LocalBackend, LocalOptions
        from services.student.checkpoints import CheckpointLimits

        backend = LocalBackend(LocalOptions(
            model=args.model, device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size,
            max_prefill_rows=args.max_prefill_rows, max_wait_ms=args.max_wait_ms, stop_at_action_line=args.stop_at == "action",
            adapters_root=args.adapters_root, prefix_cache=args.prefix_cache == "on",
            prompt_cache_mb=args.prompt_cache_mb, prefill_group_overhead_tokens=args.prefill_group_overhead_tokens,
            checkpoint_limits=CheckpointLimits(max_weights_bytes=int(args.max_adapter_mb * 1024 * 1024)),
            merge_uniform_adapter=args.merge_adapter == "on"))
    else:
        from services.student.backends.remote import RemoteOptions, create_remote_backend

        if not args.endpoint:
            raise SystemExit(f"--backend {args.backend} needs --endpoint (the server's base URL)")
        backend = create_remote_backend(RemoteOptions(
            flavor=args.backend, endpoint=args.endpoint, model=args.model, remote_model=args.remote_model,
            timeout=args.request_timeout, retries=args.retries, max_concurrency=args.max_batch_size,
            health_interval=args.health_interval))
    return StudentService(backend, limits)


def run_serve(args: argparse.Namespace) -> int:
    from services.runtime.config import ServerConfig
    from services.student.server import serve

    service = build_service(args)
    follower = None
    if args.desired_adapter_file:
        from services.student.desired_adapter import DesiredAdapterFollower

        if args.desired_adapter_poll_seconds <= 0:
            raise SystemExit("--desired-adapter-poll-seconds must be positive")
        follower = DesiredAdapterFollower(service, args.desired_adapter_file,
                                          poll_seconds=args.desired_adapter_poll_seconds)
    return serve(service, ServerConfig.from_args(args), follower=follower)
