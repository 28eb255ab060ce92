"""StudentClient: a small typed client of leap.v1.StudentService (torch-free).

    with StudentClient("127.0.0.1:50061") as student:
        student.wait_ready()
        [result] = student.act([act_item(env="household", goal="put a clean apple in fridge",
                                         observation="You arrive at fridge 1.", candidates=["open fridge 1"])])
        student.load_adapter(version="iter-1", uri="runs/r1/checkpoints/iter-1")
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leap.v1 import common_pb2, student_pb2, student_pb2_grpc
from services.runtime.channels import make_channel

SERVICE_NAME = "leap.v1.StudentService"


def act_item(*, env: str, goal: str, observation: str, candidates: Sequence[str] = (),
             history: Iterable[tuple[str, str] | Mapping[str, str] | student_pb2.HistoryEntry] = (),
             request_id: str = "", temperature: float = 0.0, max_new_tokens: int = 0, seed: int = 0,
             top_p: float = 0.0, adapter_version: str = "", constrain_action: bool = False,
             max_reason_tokens: int = 0) -> student_pb2.ActItem:
    """Build an ActItem. `history` holds (observation, action) pairs, oldest first.

    temperature 0 is greedy; seed 0 means unseeded; max_new_tokens 0 and top_p 0 mean server defaults;
    adapter_version "" means the current version at admission. constrain_action chooses the action
    among the candidates (guided decoding), after at most max_reason_tokens of reason (0: max_new_tokens).
    """
    entries = []
    for entry in history:
        if isinstance(entry, student_pb2.HistoryEntry):
            entries.append(entry)
        elif isinstance(entry, Mapping):
            entries.append(student_pb2.HistoryEntry(observation=entry["observation"], action=entry["action"]))
        else:
            observation_text, action = entry
            entries.append(student_pb2.HistoryEntry(observation=observation_text, action=action))
    return student_pb2.ActItem(
        request_id=request_id, env=env, goal=goal, history=entries, observation=observation,
        candidates=list(candidates), adapter_version=adapter_version,
        sampling=student_pb2.SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                            top_p=top_p, constrain_action=constrain_action,
                                            max_reason_tokens=max_reason_tokens))


class StudentClient:
    """Typed calls to a student server. Errors surface as grpc.RpcError with the server's status code."""

    def __init__(self, address: str, *, timeout: float = 300.0, channel: grpc.Channel | None = None):
        self.address = address
        self.timeout = timeout
        self._own_channel = channel is None
        self.channel = channel or make_channel(address, side_effect_free=True)
        self.stub = student_pb2_grpc.StudentServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> "StudentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def serving(self) -> bool:
        """True when the server's health check reports SERVING for the student service."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.2) -> None:
        """Block until the model has loaded (health SERVING), or raise TimeoutError."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.serving():
                return
            time.sleep(poll)
        raise TimeoutError(f"the student at {self.address} did not become SERVING within {timeout:.0f}s")

    def act(self, items: Sequence[student_pb2.ActItem], *, timeout: float | None = None) -> list[student_pb2.ActResult]:
        """One result per item, in order."""
        reply = self.stub.Act(student_pb2.ActRequest(items=list(items)), timeout=timeout or self.timeout)
        return list(reply.results)

    def load_adapter(self, *, version: str, uri: str, name: str = "student", sha256: str = "",
                     base_model: str = "", keep_current: bool = False,
                     timeout: float | None = None) -> student_pb2.AdapterInfo:
        """Load a LoRA checkpoint and (unless keep_current) make it the current version."""
        ref = common_pb2.CheckpointRef(name=name, version=version, uri=uri, sha256=sha256, base_model=base_model)
        return self.load_checkpoint(ref, keep_current=keep_current, timeout=timeout)

    def load_checkpoint(self, checkpoint: common_pb2.CheckpointRef, *, keep_current: bool = False,
                        timeout: float | None = None) -> student_pb2.AdapterInfo:
        """LoadAdapter with a CheckpointRef as the trainer returns it."""
        return self.stub.LoadAdapter(student_pb2.LoadAdapterRequest(checkpoint=checkpoint, keep_current=keep_current),
                                     timeout=timeout or self.timeout)

    def unload_adapter(self, version: str, *, timeout: float | None = None) -> student_pb2.AdapterInfo:
        return self.stub.UnloadAdapter(student_pb2.UnloadAdapterRequest(version=version), timeout=timeout or 30)

    def list_adapters(self, *, timeout: float | None = None) -> student_pb2.ListAdaptersResponse:
        return self.stub.ListAdapters(student_pb2.ListAdaptersRequest(), timeout=timeout or 30)

    def model_info(self, *, timeout: float | None = None) -> student_pb2.ModelInfo:
        return self.stub.GetModelInfo(student_pb2.GetModelInfoRequest(), timeout=timeout or 30)
