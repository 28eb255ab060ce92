"""Client channels shared by every caller: retries on UNAVAILABLE, round robin, message limits.

`dns:///name.namespace.svc:50051` with a headless Kubernetes Service balances across replicas.
"""

from __future__ import annotations

import json

import grpc

_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.2s",
                "maxBackoff": "3s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def make_channel(address: str, *, max_message_bytes: int = 64 * 1024 * 1024) -> grpc.Channel:
    """An insecure channel to `address` (host:port or dns:///host:port) with retries and balancing."""
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a bearer token (the privileged channel's credential)."""
    return (("authorization", f"Bearer {token}"),)


def wait_ready(channel: grpc.Channel, timeout: float = 30.0) -> None:
    """Block until the channel connects or raise TimeoutError naming the target."""
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError as exc:
        raise TimeoutError(f"service not reachable within {timeout:.0f}s") from exc
