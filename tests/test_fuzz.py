"""A reflection-driven fuzz of every LEAP-serve server (issue 20): empty, garbage, malformed, oversized and
hostile requests to every RPC, health checked after each call. Done when it counts 0 UNKNOWN,
0 INTERNAL, 0 hangs and 0 deaths.

Servers are real and served over real gRPC on loopback: the environment (household, with the privileged
token, so that the fuzz reaches PrivilegedService's logic), the oracle teacher behind it, the trainer
(job store and runner in a temporary directory), and, marked `model`, the student with the real SmolLM2
(generation capped at 4 tokens). Plausible values (a real env name, task ids, live session ids) are mixed
with hostile ones so that requests get past the first checks; the generator is seeded, so a finding
reproduces. The engine is tests/runtime/fuzz.py (also a script: python -m tests.runtime.fuzz HOST:PORT).
"""

from __future__ import annotations

import grpc
import pytest

from leap.v1 import environment_pb2, student_pb2, teacher_pb2, trainer_pb2
from services.environment.backends.household import HouseholdBackend
from services.environment.client import EnvironmentClient
from services.environment.server import EnvironmentServer
from services.runtime.config import ServerConfig
from services.runtime.server import ServiceHost
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.privileged import GrpcPrivilegedSource
from services.teacher.server import start_in_process
from services.teacher.service import TeacherService
from tests.runtime import fuzz

TOKEN = "fuzz-token"
SEED = 20
HOSTILE_CASES = 40  # random hostile requests per method, on top of the fixed wire-level cases
ACT_CASES = 12  # the student's Act generates (a few tokens) whenever a request passes its checks

TASKS = ["train-00001", "train-00002", "train-00003", "valid_unseen-00004"]
HOUSEHOLD_ACTIONS = ["look", "inventory", "go to fridge 1", "open fridge 1", "take apple 1 from countertop 1",
                     "go to countertop 1", "examine fridge 1"]
COMMON_SEEDS = {
    "env": ["household"], "task_id": TASKS, "split": ["", "", "train"], "horizon": [0, 3, 8],
    "seed": [0, 5], "page_size": [0, 2], "expert": [1, 2, 3], "action": HOUSEHOLD_ACTIONS,
    "actions": [HOUSEHOLD_ACTIONS[:2], HOUSEHOLD_ACTIONS[2:5], []],
    "candidates": [HOUSEHOLD_ACTIONS, HOUSEHOLD_ACTIONS[:3]],
    "goal": ["put a clean apple in fridge.", "Your task is to: put a apple in fridge."],
    "observation": ["You are in the middle of a room. Looking quickly around you, you see a fridge 1.",
                    "You arrive at fridge 1. The fridge 1 is closed."],
    "service": ["", "leap.v1.EnvironmentService", "leap.v1.TeacherService", "leap.v1.TrainerService"],
    "realizability_level": [0, 25, 50, 75, 100], "max_retries": [0, 1], "temperature": [0.0],
    "annotate": [True, False], "list_services": [""], "file_containing_symbol": ["leap.v1.TaskRef"],
    "file_by_filename": ["leap/v1/common.proto"],
}


def all_methods(*modules) -> set[str]:
    return {f"/{service.full_name}/{method.name}"
            for module in modules for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods}


def assert_clean(report: fuzz.Report, expected_methods: set[str]) -> None:
    print("\n" + report.summary())
    for (method, code), calls in sorted(report.by_method.items()):
        print(f"  {method} {code} {calls}")
    assert report.findings == [], "\n".join(report.findings[:40])
    missing = expected_methods - report.methods()
    assert not missing, f"methods reflection did not lead the fuzz to: {sorted(missing)}"


@pytest.fixture(scope="module")
def environment():
    server = EnvironmentServer(ServerConfig(port=0), {"household": HouseholdBackend()}, token=TOKEN, max_sessions=2048)
    server.start()
    yield server
    server.stop(grace=0)


def test_fuzz_environment(environment):
    addr = f"127.0.0.1:{environment.port}"
    with EnvironmentClient(addr) as client, grpc.insecure_channel(addr) as channel:
        def live_session() -> str:
            return client.reset("household", task_id="train-00005").session_id

        seeds = dict(COMMON_SEEDS, session_id=[live_session, live_session, "no-such-session"])
        # PrivilegedService calls carry the token (to reach its logic); the guard has its own tests.
        report = fuzz.fuzz(channel, seeds=seeds, seed=SEED, hostile_cases=HOSTILE_CASES,
                           metadata=(("authorization", f"Bearer {TOKEN}"),))
        # And without it: every privileged call refused, none failing otherwise.
        fuzz.fuzz(channel, seeds=seeds, seed=SEED + 1, hostile_cases=5, report=report,
                  skip=lambda m: m.service != "leap.v1.PrivilegedService")
    assert_clean(report, all_methods(environment_pb2))
    assert report.by_method[("/leap.v1.PrivilegedService/GetExpertActions", "UNAUTHENTICATED")] > 0
    # The fuzz got past the first checks: sessions were stepped, experts consulted.
    assert report.by_method[("/leap.v1.EnvironmentService/Step", "OK")] > 0
    assert report.by_method[("/leap.v1.PrivilegedService/GetExpertActions", "OK")] > 0


def test_fuzz_teacher(environment):
    source = GrpcPrivilegedSource(f"127.0.0.1:{environment.port}", TOKEN, timeout_s=30)
    host = start_in_process(TeacherService(OracleTeacher(), source, max_steps=30))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            report = fuzz.fuzz(channel, seeds=COMMON_SEEDS, seed=SEED, hostile_cases=HOSTILE_CASES)
    finally:
        host.stop(grace=0)
    assert_clean(report, all_methods(teacher_pb2))
    assert report.by_method[("/leap.v1.TeacherService/Correct", "OK")] > 0
    assert report.by_method[("/leap.v1.TeacherService/Demonstrate", "OK")] > 0


def test_fuzz_trainer(tmp_path):
    from services.trainer.server import create_service, registrations

    service = create_service(tmp_path / "state", tmp_path / "runs", device="cpu")
    host = ServiceHost(ServerConfig(port=0), registrations(service), label="trainer")
    host.start()
    seeds = dict(COMMON_SEEDS, job_id=["fuzz-job-1", "fuzz-job-2", ""], run_dir=["run-1", "runs/a"],
                 base_model=["smollm2"], output_name=["student-v1"], uri=["data/train.jsonl"],
                 format=["jsonl", "sft"], limit=[0, 5], method=[1, 2, 3])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            report = fuzz.fuzz(channel, seeds=seeds, seed=SEED, hostile_cases=HOSTILE_CASES)
    finally:
        host.stop(grace=0)
    assert_clean(report, all_methods(trainer_pb2))
    # No hostile request became a job (the datasets it names do not exist in the runs directory).
    assert service.list_jobs(100) == []


@pytest.mark.model
def test_fuzz_student():
    from services.student.backends.local import LocalBackend, LocalOptions
    from services.student.client import StudentClient
    from services.student.server import start_in_background
    from services.student.service import StudentLimits, StudentService

    backend = LocalBackend(LocalOptions(max_batch_size=4, max_wait_ms=5, dtype="float32"))
    # Generation kept tiny: an Act that passes every check still costs a forward pass per token on a CPU.
    limits = StudentLimits(default_max_new_tokens=1, max_new_tokens_limit=4, max_prompt_tokens=320, max_items=4)
    host, startup = start_in_background(StudentService(backend, limits), ServerConfig(port=0))
    seeds = dict(COMMON_SEEDS, max_new_tokens=[0, 1, 2], max_reason_tokens=[1], top_p=[0.0, 0.9],
                 constrain_action=[True, False], request_id=["r1", "r2"], adapter_version=["", "base"],
                 version=["v1", "base"], name=["student"], uri=["adapters/none", "/nonexistent/adapter"],
                 base_model=["smollm2"], keep_current=[True, False])
    try:
        with StudentClient(f"127.0.0.1:{host.port}", timeout=300) as client:
            client.wait_ready(timeout=300)
        assert startup.error is None
        with grpc.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            report = fuzz.fuzz(channel, seeds=seeds, seed=SEED, hostile_cases=HOSTILE_CASES, timeout=120,
                               cases_per_method=lambda m: ACT_CASES if m.name == "Act" else HOSTILE_CASES)
    finally:
        host.stop(grace=0)
    assert_clean(report, all_methods(student_pb2))
    assert report.by_method[("/leap.v1.StudentService/Act", "OK")] > 0
