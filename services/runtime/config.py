"""Server configuration from command-line flags, with defaults from environment variables.

Every flag `--some-flag` can also be set as `LEAP_SOME_FLAG` (handy in Kubernetes ConfigMaps);
an explicit flag wins over the environment, which wins over the built-in default.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


def env_default(flag: str, default):
    """Default for --flag: $LEAP_FLAG when set (converted to the default's type), else default."""
    value = os.environ.get("LEAP_" + flag.upper().replace("-", "_"))
    if value is None:
        return default
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    max_workers: int = 16
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 256
    grace_seconds: float = 10.0
    metrics_port: int = 0
    log_level: str = "info"
    log_format: str = "json"
    port_file: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServerConfig":
        return cls(
            host=args.host,
            port=args.port,
            max_workers=args.max_workers,
            max_message_bytes=int(args.max_message_mb * 1024 * 1024),
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            grace_seconds=args.grace_seconds,
            metrics_port=args.metrics_port,
            log_level=args.log_level,
            log_format=args.log_format,
            port_file=args.port_file,
        )


def add_server_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """Adds the flags every service shares."""
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=env_default("host", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 in containers) [LEAP_HOST]")
    g.add_argument("--port", type=int, default=env_default("port", default_port),
                   help=f"gRPC port; 0 picks a free one (default {default_port}) [LEAP_PORT]")
    g.add_argument("--max-workers", type=int, default=env_default("max-workers", 16),
                   help="handler threads [LEAP_MAX_WORKERS]")
    g.add_argument("--max-message-mb", type=float, default=env_default("max-message-mb", 4.0),
                   help="largest request accepted; bigger ones get RESOURCE_EXHAUSTED [LEAP_MAX_MESSAGE_MB]")
    g.add_argument("--max-concurrent-rpcs", type=int, default=env_default("max-concurrent-rpcs", 256),
                   help="calls in flight before new ones get RESOURCE_EXHAUSTED [LEAP_MAX_CONCURRENT_RPCS]")
    g.add_argument("--grace-seconds", type=float, default=env_default("grace-seconds", 10.0),
                   help="on SIGTERM, time given to in-flight calls to finish [LEAP_GRACE_SECONDS]")
    g.add_argument("--metrics-port", type=int, default=env_default("metrics-port", 0),
                   help="Prometheus /metrics port; 0 disables [LEAP_METRICS_PORT]")
    g.add_argument("--log-level", default=env_default("log-level", "info"),
                   choices=["debug", "info", "warning", "error"], help="[LEAP_LOG_LEVEL]")
    g.add_argument("--log-format", default=env_default("log-format", "json"), choices=["json", "text"],
                   help="[LEAP_LOG_FORMAT]")
    g.add_argument("--port-file", default=env_default("port-file", ""),
                   help="write the bound port to this file once serving (for --port 0) [LEAP_PORT_FILE]")
