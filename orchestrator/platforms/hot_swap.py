"""Load one adapter version on every student replica and confirm it, over plain gRPC.

Kubernetes-free on purpose: it takes the replicas' addresses (pod IP:port, found by
orchestrator.platforms.kubernetes from the student Service's EndpointSlices) and talks to each
replica directly, never through the balanced Service address, so every replica gets the call.

Per replica: ListAdapters (already there? then nothing to do) -> LoadAdapter -> ListAdapters again
to confirm the version is loaded from this checkpoint (and current, when asked). A version name that
a replica holds with another checkpoint (a previous run's adapter of the same name) is a definite
failure, never a confirmation. A transient failure (unreachable,
overloaded, timed out, or not confirmed yet) is retried with backoff; a definite refusal
(missing or corrupt adapter files, bad request) is not. Replicas are handled in parallel, and the
report names every replica that still failed, with its last error.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from leap.v1 import common_pb2, student_pb2, student_pb2_grpc
from services.runtime.channels import make_channel

log = logging.getLogger("leap.orchestrator.hot_swap")

# Codes worth another try: the replica may be restarting, busy or slow; NOT_FOUND too, because a
# shared volume can show a freshly written checkpoint to another node a little later.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.NOT_FOUND,
}


@dataclass
class ReplicaResult:
    address: str
    ok: bool
    attempts: int
    error: str = ""
    load_seconds: float = 0.0
    # The replica's current version when last asked ("" when it could not be asked).
    current_version: str = ""
    # True when the version was already loaded (nothing was loaded this time).
    already_loaded: bool = False


@dataclass
class SwapReport:
    version: str
    replicas: list[ReplicaResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.replicas) and all(r.ok for r in self.replicas)

    @property
    def failed(self) -> list[ReplicaResult]:
        return [r for r in self.replicas if not r.ok]

    def summary(self) -> str:
        good = len(self.replicas) - len(self.failed)
        text = f"adapter {self.version}: {good}/{len(self.replicas)} student replicas confirmed"
        for r in self.failed:
            text += f"; {r.address} failed after {r.attempts} attempt(s): {r.error}"
        return text


class HotSwapError(RuntimeError):
    """Some replicas did not confirm the new version. `report` says which and why."""

    def __init__(self, report: SwapReport):
        super().__init__(report.summary() if report.replicas else
                         f"adapter {report.version}: no student replica to load it on")
        self.report = report


def _rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'ERROR'}: {details}"


class ConflictingAdapter(Exception):
    """The replica holds the version name with another checkpoint: loading again cannot fix that."""


def same_checkpoint(held: common_pb2.CheckpointRef, wanted: common_pb2.CheckpointRef) -> bool:
    """Whether a loaded adapter's checkpoint is `wanted` (same folder, and same digest where both say)."""
    if held.uri != wanted.uri:
        return False
    return not (held.sha256 and wanted.sha256) or held.sha256.lower() == wanted.sha256.lower()


def _confirmed(listed: student_pb2.ListAdaptersResponse, version: str, make_current: bool,
               checkpoint: common_pb2.CheckpointRef | None = None) -> tuple[bool, str]:
    loaded = {a.version: a for a in listed.adapters}
    if version not in loaded:
        return False, f"{version} is not among the loaded adapters ({', '.join(sorted(loaded)) or 'none'})"
    held = loaded[version].checkpoint
    if checkpoint is not None and not same_checkpoint(held, checkpoint):
        raise ConflictingAdapter(
            f"{version} is loaded from {held.uri or '(unknown)'}, not from {checkpoint.uri}: a version name is "
            "bound to its first weights; restart the student replicas before a new run "
            "(kubectl -n leap rollout restart deployment/leap-student)")
    if make_current and listed.current_version != version:
        return False, f"{version} is loaded but the current version is {listed.current_version or '(none)'}"
    return True, ""


def swap_one(address: str, checkpoint: common_pb2.CheckpointRef, *, make_current: bool = True,
             attempts: int = 3, backoff_s: float = 1.0, load_timeout_s: float = 300.0,
             list_timeout_s: float = 30.0) -> ReplicaResult:
    """Load `checkpoint` (its version is the served name) on the replica at `address` and confirm it."""
    version = checkpoint.version
    last_error = ""
    current = ""
    attempt = 0
    # TLS when the orchestrator has it configured (LEAP_TLS_CA, ...): replicas are across the network.
    # No channel-level retries: this loop retries with its own backoff and counts the attempts.
    with make_channel(address, retry_unavailable=False) as channel:
        stub = student_pb2_grpc.StudentServiceStub(channel)
        for attempt in range(1, attempts + 1):
            try:
                listed = stub.ListAdapters(student_pb2.ListAdaptersRequest(), timeout=list_timeout_s)
                current = listed.current_version
                done, _ = _confirmed(listed, version, make_current, checkpoint)
                if done:
                    return ReplicaResult(address, True, attempt, current_version=current, already_loaded=True)
                load_seconds = 0.0
                try:
                    info = stub.LoadAdapter(
                        student_pb2.LoadAdapterRequest(checkpoint=checkpoint, keep_current=not make_current),
                        timeout=load_timeout_s)
                    load_seconds = info.load_seconds
                except grpc.RpcError as exc:
                    # Loaded already under this name (an interrupted earlier swap): confirm below.
                    if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                        raise
                listed = stub.ListAdapters(student_pb2.ListAdaptersRequest(), timeout=list_timeout_s)
                current = listed.current_version
                done, why = _confirmed(listed, version, make_current, checkpoint)
                if done:
                    return ReplicaResult(address, True, attempt, load_seconds=load_seconds, current_version=current)
                last_error = f"not confirmed: {why}"
            except ConflictingAdapter as exc:
                last_error = str(exc)
                break
            except grpc.RpcError as exc:
                last_error = _rpc_error(exc)
                if exc.code() not in RETRYABLE:
                    break
            log.warning("hot swap attempt failed", extra={"replica": address, "version": version,
                                                          "attempt": attempt, "error": last_error})
            if attempt < attempts:
                time.sleep(backoff_s * (2 ** (attempt - 1)))
    return ReplicaResult(address, False, attempt, error=last_error, current_version=current)


def swap_adapter_on_replicas(addresses: list[str], checkpoint: common_pb2.CheckpointRef, *,
                             make_current: bool = True, attempts: int = 3, backoff_s: float = 1.0,
                             load_timeout_s: float = 300.0, max_parallel: int = 16,
                             require_all: bool = True) -> SwapReport:
    """Swap on every address in parallel. With require_all, raise HotSwapError unless all confirm."""
    if not checkpoint.version:
        raise ValueError("the checkpoint has no version: a hot swap needs a version name")
    report = SwapReport(checkpoint.version)
    if addresses:
        with ThreadPoolExecutor(max_workers=min(max_parallel, len(addresses)),
                                thread_name_prefix="hot-swap") as pool:
            futures = [pool.submit(swap_one, a, checkpoint, make_current=make_current, attempts=attempts,
                                   backoff_s=backoff_s, load_timeout_s=load_timeout_s) for a in addresses]
            report.replicas = [f.result() for f in futures]
    if require_all and not report.ok:
        raise HotSwapError(report)
    return report
