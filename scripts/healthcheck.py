"""Container health probe: exit 0 when the local server reports SERVING over grpc.health.v1.

    python healthcheck.py [SERVICE]      e.g. leap.v1.StudentService ("" = the whole server)

The address is $LEAP_HEALTH_ADDR, else 127.0.0.1:$LEAP_PORT. Used by the images' HEALTHCHECK (Docker,
Compose); Kubernetes uses its native gRPC probes instead. Standalone on purpose: it needs only grpcio
and grpcio-health-checking, never the project's packages.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    service = argv[1] if len(argv) > 1 else ""
    address = os.environ.get("LEAP_HEALTH_ADDR") or f"127.0.0.1:{os.environ.get('LEAP_PORT', '50051')}"
    timeout = float(os.environ.get("LEAP_HEALTH_TIMEOUT", "4"))
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        print(f"unhealthy: {address} {service or '(server)'}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {address} {service or '(server)'}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
