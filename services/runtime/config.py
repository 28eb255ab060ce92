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
    #: Seconds after which the server asks a client to reconnect (GOAWAY; 0: never). Clients then
    #: resolve the address again and see replicas added since (a headless Kubernetes Service).
    max_connection_age_s: float = 0.0
    #: Seconds the calls still running on such a connection get before it is closed (0: no limit).
    max_connection_age_grace_s: float = 0.0
    # TLS (services.runtime.tls): the server's certificate and key (both empty: plaintext), the CA its
    # clients' certificates must chain to (mutual TLS unless tls_client_auth is "none"), and this
    # process's own client certificate for its calls to other services.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_client_auth: str = "require"
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_name: str = ""
    # A plaintext port serving only grpc.health.v1 (0: none), for probes that cannot speak TLS.
    health_port: int = 0

    def server_tls(self):
        """services.runtime.tls.ServerTLS for these settings, or None for plaintext."""
        from services.runtime.tls import server_tls

        return server_tls(self.tls_cert, self.tls_key, self.tls_ca, self.tls_client_auth)

    def client_tls(self):
        """services.runtime.tls.ClientTLS for this process's own calls, or None for plaintext."""
        from services.runtime.tls import ClientTLS

        if not (self.tls_ca or self.tls_client_cert or self.tls_client_key):
            return None
        return ClientTLS(self.tls_ca, self.tls_client_cert, self.tls_client_key, self.tls_server_name)

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
            max_connection_age_s=getattr(args, "max_connection_age_seconds", 0.0),
            max_connection_age_grace_s=getattr(args, "max_connection_age_grace_seconds", 0.0),
            tls_cert=getattr(args, "tls_cert", ""),
            tls_key=getattr(args, "tls_key", ""),
            tls_ca=getattr(args, "tls_ca", ""),
            tls_client_auth=getattr(args, "tls_client_auth", "require"),
            tls_client_cert=getattr(args, "tls_client_cert", ""),
            tls_client_key=getattr(args, "tls_client_key", ""),
            tls_server_name=getattr(args, "tls_server_name", ""),
            health_port=getattr(args, "health_port", 0),
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
    g.add_argument("--max-connection-age-seconds", type=float, default=env_default("max-connection-age-seconds", 0.0),
                   help="ask clients to reconnect after this long (0: never), so that they see new replicas "
                        "[LEAP_MAX_CONNECTION_AGE_SECONDS]")
    g.add_argument("--max-connection-age-grace-seconds", type=float,
                   default=env_default("max-connection-age-grace-seconds", 0.0),
                   help="time the calls on such a connection get to finish (0: no limit) "
                        "[LEAP_MAX_CONNECTION_AGE_GRACE_SECONDS]")
    add_tls_arguments(parser)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS flags of a server (which may also call other services as a client); all off by default."""
    t = parser.add_argument_group("TLS (off unless --tls-cert and --tls-key are given)")
    t.add_argument("--tls-cert", default=env_default("tls-cert", ""), metavar="FILE",
                   help="server certificate chain (PEM); turns TLS on with --tls-key [LEAP_TLS_CERT]")
    t.add_argument("--tls-key", default=env_default("tls-key", ""), metavar="FILE",
                   help="server private key (PEM) [LEAP_TLS_KEY]")
    t.add_argument("--tls-ca", default=env_default("tls-ca", ""), metavar="FILE",
                   help="CA certificate (PEM): clients must present a certificate it signed (mutual TLS), and "
                        "this process's own calls to other services verify them against it [LEAP_TLS_CA]")
    t.add_argument("--tls-client-auth", default=env_default("tls-client-auth", "require"),
                   choices=["require", "none"],
                   help="with --tls-ca: require a client certificate (default) or accept clients without one "
                        "[LEAP_TLS_CLIENT_AUTH]")
    t.add_argument("--tls-client-cert", default=env_default("tls-client-cert", ""), metavar="FILE",
                   help="certificate this process presents when it calls another service over mutual TLS "
                        "[LEAP_TLS_CLIENT_CERT]")
    t.add_argument("--tls-client-key", default=env_default("tls-client-key", ""), metavar="FILE",
                   help="the key of --tls-client-cert [LEAP_TLS_CLIENT_KEY]")
    t.add_argument("--tls-server-name", default=env_default("tls-server-name", ""), metavar="NAME",
                   help="name to check in the certificates of the services this process calls, when their "
                        "addresses are not names the certificates hold [LEAP_TLS_SERVER_NAME]")
    t.add_argument("--health-port", type=int, default=env_default("health-port", 0),
                   help="also serve grpc.health.v1 alone, in plaintext, on this port: for Kubernetes' native "
                        "gRPC probes, which cannot speak TLS; 0 = off [LEAP_HEALTH_PORT]")
