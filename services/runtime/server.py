"""One way to start any LEAP-serve service.

    host = ServiceHost(config, [Registration(NAME, add_fn, servicer)])
    host.start()          # binds, serves health + reflection, marks services SERVING
    host.wait()           # until SIGTERM/SIGINT; then drains in-flight calls and exits

Health (`grpc.health.v1`) is served per service name and for the whole server (""), so Kubernetes
probes and `grpc_health_probe -service=leap.v1.StudentService` both work. A service that is still
loading a model registers with `serving=False` and calls `host.set_serving(name, True)` when ready.

Handler threads: calls that hold their thread for long (a WatchJob stream, an Act that generates for
a minute, a LoadAdapter that reads weights, an idle health Watch or reflection stream) run on pools of
their own, declared per method (`Registration.long_calls`). The shared pool (`--max-workers`) then
serves only short calls, so health checks and control calls (GetJob, CancelJob, GetModelInfo ...)
keep answering however many long calls are in flight; long calls beyond their pool's size wait in
that pool's queue (never in the shared one), and one whose client left while it waited never runs.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.runtime.config import ServerConfig
from services.runtime.files import atomic_write_text
from services.runtime.interceptors import ErrorAndMetricsInterceptor
from services.runtime.metrics import start_metrics_server

log = logging.getLogger("leap.server")


class BindError(OSError):
    """The server cannot listen on its address (port in use, unknown host, no permission)."""


def _check_bindable(host: str, port: int) -> None:
    """Raise BindError saying why (host:port) cannot be bound, before gRPC tries and logs its own error."""
    if not port:
        return  # port 0: the kernel picks a free one
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise BindError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None

#: How often the main thread wakes while serving, so that a SIGTERM handler always gets to run.
_SIGNAL_POLL_S = 0.25


@dataclass
class Registration:
    """A gRPC service to host: its full name, the generated add_*_to_server function, the servicer."""

    name: str
    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any
    serving: bool = True
    #: Methods whose calls hold a handler thread for long, by method name ("WatchJob") -> threads of
    #: the method's own pool (see the module docstring). Other methods share `--max-workers` threads.
    long_calls: dict[str, int] = field(default_factory=dict)


#: Built-in long calls of every server: a health Watch or a reflection stream stays open (and holds its
#: thread) for as long as the client keeps it open.
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
BUILTIN_LONG_CALLS = {
    HEALTH_WATCH: 8,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": 4,
}
#: A long method holds at most this many times its pool's threads in calls (running or waiting).
LONG_CALL_QUEUE_FACTOR = 2


class _LongCallPools(grpc.ServerInterceptor):
    """Runs each long method's calls on that method's own thread pool.

    grpc runs a handler on `behavior.experimental_thread_pool` when the behavior carries one (grpcio's
    `_select_thread_pool_for_behavior`); this interceptor, the outermost, gives each long method's
    behavior its pool. A call whose client went away while it waited in the pool's queue is dropped
    before its handler runs (it would otherwise generate, or stream, for nobody).
    """

    def __init__(self, sizes: dict[str, int], label: str):
        self.pools = {
            method: futures.ThreadPoolExecutor(max_workers=size,
                                               thread_name_prefix=f"{label}-{method.rsplit('/', 1)[-1]}")
            for method, size in sizes.items()
        }
        #: Calls a method may hold at once, running or waiting for a thread of its pool: beyond, a call is
        #: refused at once. Waiting calls count against the server's --max-concurrent-rpcs too, so without
        #: this bound idle health Watch streams (no credentials needed) could fill it and fail the
        #: kubelet's probes with RESOURCE_EXHAUSTED.
        self.limits = {method: LONG_CALL_QUEUE_FACTOR * size for method, size in sizes.items()}
        self._open = {method: 0 for method in sizes}
        self._lock = threading.Lock()

    def _admit(self, method: str) -> bool:
        with self._lock:
            if self._open[method] >= self.limits[method]:
                return False
            self._open[method] += 1
            return True

    def _release(self, method: str) -> None:
        with self._lock:
            self._open[method] -= 1

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        pool = self.pools.get(method)
        if handler is None or pool is None:
            return handler
        kind = next(name for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                    if getattr(handler, name))
        behavior = getattr(handler, kind)
        factory = {"unary_unary": grpc.unary_unary_rpc_method_handler,
                   "unary_stream": grpc.unary_stream_rpc_method_handler,
                   "stream_unary": grpc.stream_unary_rpc_method_handler,
                   "stream_stream": grpc.stream_stream_rpc_method_handler}[kind]
        if not self._admit(method):
            limit = self.limits[method]

            def refuse(request_or_iterator, context):  # on the server's own threads, at once
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{method} already has {limit} calls open on this server; close some and retry")

            return factory(refuse, handler.request_deserializer, handler.response_serializer)

        if kind in ("unary_stream", "stream_stream"):
            def run(request_or_iterator, context):
                try:
                    if context.is_active():
                        yield from behavior(request_or_iterator, context)
                finally:
                    self._release(method)
        else:
            def run(request_or_iterator, context):
                try:
                    if not context.is_active():
                        context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call before it started")
                    return behavior(request_or_iterator, context)
                finally:
                    self._release(method)

        run.experimental_thread_pool = pool
        return factory(run, handler.request_deserializer, handler.response_serializer)

    def shutdown(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


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
        long_calls = dict(BUILTIN_LONG_CALLS)
        for reg in registrations:
            for method, threads in reg.long_calls.items():
                if threads < 1:
                    raise ValueError(f"{reg.name}/{method}: a long-call pool needs at least 1 thread (got {threads})")
                long_calls[f"/{reg.name}/{method}"] = threads
        self._long_calls = _LongCallPools(long_calls, label)
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", max(config.max_message_bytes, 16 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
        ]
        if config.max_connection_age_s > 0:
            # A GOAWAY after this age (gRPC adds +-10 % jitter) makes clients re-resolve and rebalance.
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)))
            if config.max_connection_age_grace_s > 0:
                options.append(("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{label}-rpc"),
            interceptors=[self._long_calls, ErrorAndMetricsInterceptor()],  # the pools' must be outermost
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=options,
        )
        self.port: int | None = None
        self.health_port: int | None = None  # the plaintext health-only port (--health-port), when served
        self._health_server: grpc.Server | None = None

    def start(self) -> int:
        for reg in self.registrations:
            reg.add_to_server(reg.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        names = [reg.name for reg in self.registrations]
        reflection.enable_server_reflection(
            names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        tls = self.config.server_tls()  # TLSConfigError (a ValueError) for unreadable files: before binding
        _check_bindable(self.config.host, self.config.port)
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(self.config.address)
            else:
                self.port = self.server.add_secure_port(self.config.address, tls.credentials())
        except RuntimeError:  # grpc: "Failed to bind to address ..."
            self.port = 0
        if not self.port:
            raise BindError(f"cannot listen on {self.config.address}: the port is in use, or the host is not "
                            "an address of this machine")
        self.server.start()
        for reg in self.registrations:
            self.set_serving(reg.name, reg.serving)
        self._update_overall()
        try:
            metrics_port = start_metrics_server(self.config.metrics_port)
            if self.config.health_port:
                self._start_health_server()
        except OSError as exc:
            self.server.stop(0)
            if isinstance(exc, BindError):
                raise
            raise BindError(f"cannot serve metrics on port {self.config.metrics_port}: {exc.strerror or exc}") from None
        if self.config.port_file:
            atomic_write_text(self.config.port_file, f"{self.port}\n")
        log.info("serving", extra={"services": ",".join(names), "host": self.config.host, "port": self.port,
                                   "metrics_port": metrics_port or 0, "health_port": self.health_port or 0,
                                   "tls": "off" if tls is None else "mutual" if tls.mutual else "on"})
        return self.port

    def _start_health_server(self) -> None:
        """grpc.health.v1 alone, in plaintext, on --health-port: for Kubernetes' native gRPC probes, which
        cannot speak TLS. It shares the health servicer, so it reports exactly what the main port does,
        and serves nothing else."""
        _check_bindable(self.config.host, self.config.health_port)
        # Watch streams get a pool of their own here too (bounded like the main port's): idle ones must
        # never hold the threads the kubelet's Check needs.
        self._health_long_calls = _LongCallPools({HEALTH_WATCH: 2}, f"{self.label}-health")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{self.label}-health"),
                             interceptors=[self._health_long_calls, ErrorAndMetricsInterceptor()],
                             options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host = self.config.address.rpartition(":")[0]
        try:
            port = server.add_insecure_port(f"{host}:{self.config.health_port}")
        except RuntimeError:
            port = 0
        if not port:
            raise BindError(f"cannot listen on {host}:{self.config.health_port} (--health-port)")
        server.start()
        self._health_server, self.health_port = server, port

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

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within `grace` seconds, run shutdown hooks."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_seconds if grace is None else grace
        log.info("shutting down", extra={"grace_seconds": grace})
        self._health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
            self._health_long_calls.shutdown()
        self._long_calls.shutdown()
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
    from services.runtime.tls import configure_client_tls

    configure_logging(config.log_level, config.log_format)
    configure_client_tls(config.client_tls())  # this service's own calls to other services
    host = ServiceHost(config, registrations, label=label, on_shutdown=on_shutdown)
    host.start()
    failed = threading.Event()

    def start_up() -> None:
        try:
            on_start(host)
        except BaseException:  # noqa: BLE001 - a server that cannot start must not linger NOT_SERVING
            log.exception("start-up failed; the server stops")
            failed.set()
            host.stop(grace=0)

    if on_start is not None:
        threading.Thread(target=start_up, daemon=True, name=f"{label}-startup").start()
    host.wait()
    return 1 if failed.is_set() else 0
