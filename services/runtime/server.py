"""One way to start any LEAP-serve service.

    host = ServiceHost(config, [Registration(NAME, add_fn, servicer)])
    host.start()          # binds, serves health + reflection, marks services SERVING
    host.wait()           # until SIGTERM/SIGINT; then drains in-flight calls and exits

Health (`grpc.health.v1`) is served per service name and for the whole server (""), so Kubernetes
probes and `grpc_health_probe -service=leap.v1.StudentService` both work. A service that is still
loading a model registers with `serving=False` and calls `host.set_serving(name, True)` when ready.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.runtime.config import ServerConfig
from services.runtime.files import atomic_write_text
from services.runtime.interceptors import ErrorAndMetricsInterceptor
from services.runtime.metrics import start_metrics_server

log = logging.getLogger("leap.server")

#: How often the main thread wakes while serving, so that a SIGTERM handler always gets to run.
_SIGNAL_POLL_S = 0.25


@dataclass
class Registration:
    """A gRPC service to host: its full name, the generated add_*_to_server function, the servicer."""

    name: str
    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any
    serving: bool = True


class ServiceHost:
    def __init__(self, config: ServerConfig, registrations: list[Registration], *,
                 on_shutdown: list[Callable[[], None]] | None = None, label: str = "leap"):
        self.config = config
        self.registrations = registrations
        self.label = label
        self._on_shutdown = list(on_shutdown or [])
        self._stopped = threading.Event()
        self._shutdown_complete = threading.Event()
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{label}-rpc"),
            interceptors=[ErrorAndMetricsInterceptor()],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", max(config.max_message_bytes, 16 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.port: int | None = None

    def start(self) -> int:
        for reg in self.registrations:
            reg.add_to_server(reg.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        names = [reg.name for reg in self.registrations]
        reflection.enable_server_reflection(
            names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = self.server.add_insecure_port(self.config.address)
        if not self.port:
            raise RuntimeError(f"could not bind {self.config.address}: is the port in use?")
        self.server.start()
        for reg in self.registrations:
            self.set_serving(reg.name, reg.serving)
        self._update_overall()
        metrics_port = start_metrics_server(self.config.metrics_port)
        if self.config.port_file:
            atomic_write_text(self.config.port_file, f"{self.port}\n")
        log.info("serving", extra={"services": ",".join(names), "host": self.config.host, "port": self.port,
                                   "metrics_port": metrics_port or 0})
        return self.port

    def set_serving(self, name: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self._health.set(name, status)
        for reg in self.registrations:
            if reg.name == name:
                reg.serving = serving
        self._update_overall()

    def _update_overall(self) -> None:
        all_up = all(reg.serving for reg in self.registrations)
        self._health.set("", health_pb2.HealthCheckResponse.SERVING if all_up
                         else health_pb2.HealthCheckResponse.NOT_SERVING)

    def add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        self._on_shutdown.append(hook)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within `grace` seconds, run shutdown hooks."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_seconds if grace is None else grace
        log.info("shutting down", extra={"grace_seconds": grace})
        self._health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        for hook in self._on_shutdown:
            try:
                hook()
            except Exception:  # noqa: BLE001 - shutdown must go on
                log.exception("shutdown hook failed")
        log.info("stopped")
        self._shutdown_complete.set()

    def wait(self) -> None:
        """Block until SIGTERM/SIGINT (main thread) or stop(); then shut down gracefully."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        # Poll, never block forever: when the kernel hands the signal to another thread, CPython runs the
        # Python handler on the main thread at its next bytecode, which an untimed wait never reaches
        # (seen as a SIGTERM ignored about one time in eight). A timed wait returns to bytecode each tick.
        while not self._stopped.wait(timeout=_SIGNAL_POLL_S):
            pass
        self.server.wait_for_termination()
        # stop() runs in another thread when a signal arrived: return only once its hooks have run
        # (e.g. a model's decode thread has stopped), so the process never exits mid-shutdown.
        self._shutdown_complete.wait()


def serve_forever(config: ServerConfig, registrations: list[Registration], *,
                  label: str = "leap", on_start: Callable[[ServiceHost], None] | None = None,
                  on_shutdown: list[Callable[[], None]] | None = None) -> int:
    """Configure logging, start a ServiceHost, run `on_start` (e.g. load a model), serve until SIGTERM."""
    from services.runtime.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    host = ServiceHost(config, registrations, label=label, on_shutdown=on_shutdown)
    host.start()
    if on_start is not None:
        threading.Thread(target=on_start, args=(host,), daemon=True, name=f"{label}-startup").start()
    host.wait()
    return 0
