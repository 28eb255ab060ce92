"""Client channels shared by every caller: retries on UNAVAILABLE, round robin, message limits, TLS.

Channels to side-effect-free services (the student's Act, the teacher's corrections) also retry
CANCELLED: gRPC core cancels a call that reached a server after its shutdown began but before a
handler took it, with CANCELLED instead of UNAVAILABLE (grpc/grpc#41785), so a replica that drains
would otherwise fail the calls that raced its GOAWAY. A retry only happens while no response has
started, and a call the client itself cancels is never retried.

`dns:///name.namespace.svc:50051` with a headless Kubernetes Service balances across replicas.
TLS (services.runtime.tls) is used when the caller passes it or the process has it configured
(`configure_client_tls`, or the LEAP_TLS_CA / LEAP_TLS_CLIENT_CERT / LEAP_TLS_CLIENT_KEY variables).
"""

from __future__ import annotations

import json

import grpc

from services.runtime.tls import ClientTLS, default_client_tls

#: Pass as `tls=` to make_channel for a plaintext channel whatever the process's TLS settings say.
PLAINTEXT = "plaintext"

_RETRYABLE = ["UNAVAILABLE"]
_RETRYABLE_SIDE_EFFECT_FREE = ["UNAVAILABLE", "CANCELLED"]

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
                "retryableStatusCodes": _RETRYABLE,
            },
        }
    ],
}


def make_channel(address: str, *, max_message_bytes: int = 64 * 1024 * 1024,
                 tls: ClientTLS | str | None = None, health_check_service: str | None = None,
                 retry_unavailable: bool = True, side_effect_free: bool = False) -> grpc.Channel:
    """A channel to `address` (host:port or dns:///host:port) with retries and balancing.

    tls: a ClientTLS, PLAINTEXT, or None for the process's default (plaintext unless TLS is configured).
    health_check_service: a grpc.health.v1 service name; round robin then sends calls only to the
    replicas that report it SERVING (a replica still loading is skipped, not retried into).
    retry_unavailable: False for a caller that retries itself and counts its attempts (the hot swap
    of one replica): the channel then returns UNAVAILABLE at once.
    side_effect_free: True when calling twice does no harm (the student, the teacher): CANCELLED from a
    draining server is retried too (see the module's docstring).
    """
    service_config = json.loads(json.dumps(_SERVICE_CONFIG))
    if not retry_unavailable:
        service_config["methodConfig"] = []
    elif side_effect_free:
        service_config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] = list(_RETRYABLE_SIDE_EFFECT_FREE)
    if health_check_service is not None:
        service_config["healthCheckConfig"] = {"serviceName": health_check_service}
    options = [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", int(retry_unavailable)),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    settings = None if tls == PLAINTEXT else (tls if tls is not None else default_client_tls())
    if settings is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, settings.credentials(), options=options + settings.options())


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a bearer token (the privileged channel's credential).

    Whitespace around the token is dropped: a token read from a file ends in a newline, which gRPC
    refuses in a metadata value (the call would fail in the client before it is sent)."""
    return (("authorization", f"Bearer {token.strip()}"),)


def wait_ready(channel: grpc.Channel, timeout: float = 30.0) -> None:
    """Block until the channel connects or raise TimeoutError naming the target."""
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError as exc:
        raise TimeoutError(f"service not reachable within {timeout:.0f}s") from exc
