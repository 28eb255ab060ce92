"""Prometheus metrics shared by every service (served over HTTP on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "leap_rpc_requests_total", "gRPC calls handled, by method and status code", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "leap_rpc_duration_seconds",
    "Time spent handling gRPC calls",
    ["method"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RPC_IN_FLIGHT = Gauge("leap_rpc_in_flight", "gRPC calls being handled now", ["method"])


def start_metrics_server(port: int, host: str = "0.0.0.0") -> int | None:
    """Serve /metrics on the given port (0 disables). Returns the port or None."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host)
    return server.server_address[1]
