"""A small servicer used to test the shared runtime through a real generated service.

ListEnvironments raises a plain exception (-> INTERNAL), ListTasks raises a ServiceError,
Step sleeps for `float(action)` seconds then answers (for drain and deadline tests).
Run as a script it serves on a free port and writes the port to argv[1]. With a second argument
`sigterm-from-a-worker-thread`, a non-main thread sends the process SIGTERM once it serves: the kernel
may hand a process's signal to any of its threads, and the server must still shut down.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from leap.v1 import environment_pb2 as pb
from leap.v1 import environment_pb2_grpc as pb_grpc
from services.runtime.config import ServerConfig
from services.runtime.errors import NotFound
from services.runtime.server import Registration, ServiceHost, serve_forever

NAME = "leap.v1.EnvironmentService"


class DemoServicer(pb_grpc.EnvironmentServiceServicer):
    def ListEnvironments(self, request, context):
        raise RuntimeError("boom: the demo handler failed")

    def ListTasks(self, request, context):
        raise NotFound(f"unknown environment {request.env!r}; valid names: demo")

    def Step(self, request, context):
        time.sleep(float(request.action))
        return pb.StepResponse(observation=pb.Observation(text=f"slept {request.action}"))


def registrations() -> list[Registration]:
    return [Registration(NAME, pb_grpc.add_EnvironmentServiceServicer_to_server, DemoServicer())]


def start_in_process(**overrides) -> ServiceHost:
    host = ServiceHost(ServerConfig(port=0, **overrides), registrations(), label="demo")
    host.start()
    return host


def _sigterm_from_a_worker_thread(delay_s: float) -> None:
    time.sleep(delay_s)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)


def _failing_start_up(host) -> None:
    raise RuntimeError("model weights not found")


if __name__ == "__main__":
    if sys.argv[2:] == ["sigterm-from-a-worker-thread"]:
        threading.Thread(target=_sigterm_from_a_worker_thread, args=(1.0,), daemon=True).start()
    start_up = _failing_start_up if sys.argv[2:] == ["failing-start-up"] else None
    sys.exit(serve_forever(ServerConfig(port=0, port_file=sys.argv[1], grace_seconds=10.0, log_format="text"),
                           registrations(), label="demo", on_start=start_up))
