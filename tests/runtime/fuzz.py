"""A reflection-driven fuzz of gRPC servers: what a hostile client can send to every RPC.

It asks a server's reflection service which services it serves and how their messages are built,
then sends every method empty, garbage, malformed, oversized and hostile requests (built per field type
from the descriptors, mixed with plausible values so that calls get past the first checks), and checks
the server's health after each call. A finding is a call answered UNKNOWN or INTERNAL, a call that
hangs past its deadline, or a server that stops answering its health check.

    python -m tests.runtime.fuzz HOST:PORT [--token T] [--cases 40] [--seed 20]

The CI test (tests/test_fuzz.py) runs it against every LEAP-serve server.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import descriptor as _d
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

FD = _d.FieldDescriptor
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"

#: Codes that are findings whatever the request: the server did not know what went wrong.
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


# --- discovery ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    service: str
    name: str
    input: _d.Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def discover(channel: grpc.Channel, timeout: float = 10.0) -> list[Method]:
    """Every method of every service the server lists, with its request descriptor, via reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(**request) -> reflection_pb2.ServerReflectionResponse:
        return next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]),
                                                   timeout=timeout)))

    services = [s.name for s in ask(list_services="").list_services_response.service]
    protos: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for service in services:
        for raw in ask(file_containing_symbol=service).file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            protos.setdefault(proto.name, proto)
    pool = descriptor_pool.DescriptorPool()
    pending = dict(protos)
    while pending:  # add files after their dependencies
        progressed = False
        for name, proto in list(pending.items()):
            if all(dep not in pending for dep in proto.dependency):
                pool.Add(proto)
                del pending[name]
                progressed = True
        if not progressed:
            raise RuntimeError(f"reflection returned files with missing dependencies: {sorted(pending)}")
    methods = []
    for service in services:
        desc = pool.FindServiceByName(service)
        for m in desc.methods:
            methods.append(Method(service, m.name, m.input_type, m.client_streaming, m.server_streaming))
    return methods


# --- hostile values -------------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "", " ", "\x00", "a\x00b", "x" * 100_000, "\u00e9" * 20_000, "\U0001F600" * 5_000, "\r\n" * 500,
    "../../../../etc/passwd", "/etc/passwd", "/proc/self/environ", "~", "~/.ssh/id_rsa", "file:///etc/passwd",
    "file://" + "a" * 5000, "s3://bucket/../../x", "C:\\Windows\\system32", "\\\\host\\share",
    "train-" + "9" * 5000, "train-\uff10\uff10\uff11", "train-\u00b2", "-1", "1e400", "NaN", "inf",
    "\u202e\ufeff\u200b", "%s%s%n%x", "{{7*7}}${7*7}", "' OR 1=1 --", "[" * 20_000, '{"a":' * 2_000,
    "Bearer x", "null", "true", "0x7fffffff",
]
HOSTILE_INTS = {
    32: [0, 1, -1, 7, 2**31 - 1, -(2**31), 65_536, 1_000_000],
    64: [0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, 10**15],
}
HOSTILE_UINTS = {32: [0, 1, 2**32 - 1, 2**31], 64: [0, 1, 2**64 - 1, 2**63]}
HOSTILE_FLOATS = [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e30, -1e30, 3e-39, 0.5, 2.0001]
HOSTILE_DOUBLES = HOSTILE_FLOATS + [1e300, -1e300, 5e-324]
HOSTILE_ENUMS = [0, 1, 2, 3, 999, -1, 2**31 - 1]
HOSTILE_BYTES = [b"", b"\x00" * 1000, bytes(range(256)), b"\xff" * 64]

_INT32 = {FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32}
_INT64 = {FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64}
_UINT32 = {FD.TYPE_UINT32, FD.TYPE_FIXED32}
_UINT64 = {FD.TYPE_UINT64, FD.TYPE_FIXED64}


@dataclass
class Generator:
    """Builds requests for message descriptors: plausible values from `seeds` (by field name), hostile
    values by field type, and nested messages down to a bounded depth."""

    rng: random.Random
    seeds: dict[str, list] = field(default_factory=dict)
    hostile_share: float = 0.4
    max_depth: int = 3
    #: Full name of a field that always gets a hostile value (the others follow hostile_share).
    target: str = ""

    def scalar(self, f: _d.FieldDescriptor, hostile: bool):
        seeded = self.seeds.get(f.name)
        if seeded and not hostile:
            value = self.rng.choice(seeded)
            return value() if callable(value) else value
        t = f.type
        if t == FD.TYPE_STRING:
            return self.rng.choice(HOSTILE_STRINGS)
        if t == FD.TYPE_BYTES:
            return self.rng.choice(HOSTILE_BYTES)
        if t == FD.TYPE_BOOL:
            return self.rng.random() < 0.5
        if t in _INT32:
            return self.rng.choice(HOSTILE_INTS[32])
        if t in _INT64:
            return self.rng.choice(HOSTILE_INTS[64])
        if t in _UINT32:
            return self.rng.choice(HOSTILE_UINTS[32])
        if t in _UINT64:
            return self.rng.choice(HOSTILE_UINTS[64])
        if t == FD.TYPE_FLOAT:
            return self.rng.choice(HOSTILE_FLOATS)
        if t == FD.TYPE_DOUBLE:
            return self.rng.choice(HOSTILE_DOUBLES)
        if t == FD.TYPE_ENUM:
            return self.rng.choice(HOSTILE_ENUMS)
        raise TypeError(f"no values for field type {t}")

    def fill(self, message, depth: int = 0) -> None:
        for f in message.DESCRIPTOR.fields:
            targeted = f.full_name == self.target
            if not targeted and self.rng.random() < 0.15:
                continue  # leave some fields unset
            hostile = targeted or self.rng.random() < self.hostile_share
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                target = getattr(message, f.name)
                key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                for _ in range(self.rng.choice([0, 1, 3])):
                    key = self.scalar(key_f, True)
                    if value_f.message_type is not None:
                        if depth < self.max_depth:
                            self.fill(target[key], depth + 1)
                    else:
                        target[key] = self.scalar(value_f, hostile)
                continue
            if f.is_repeated:
                count = self.rng.choice([0, 1, 2, 3, 3, 200] if hostile else [1, 2, 3])
                container = getattr(message, f.name)
                if f.message_type is not None:
                    if depth < self.max_depth:
                        for _ in range(count):
                            self.fill(container.add(), depth + 1)
                else:
                    seeded = self.seeds.get(f.name)
                    if seeded and not hostile:
                        value = self.rng.choice(seeded)
                        container.extend(value() if callable(value) else value)
                    else:
                        container.extend(self.scalar(f, True) for _ in range(count))
                continue
            if f.message_type is not None:
                if depth < self.max_depth:
                    self.fill(getattr(message, f.name), depth + 1)
                    if not message.HasField(f.name):
                        getattr(message, f.name).SetInParent()
                continue
            setattr(message, f.name, self.scalar(f, hostile))


# --- wire-level cases -----------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _field_names(desc: _d.Descriptor, depth: int = 0, seen: frozenset = frozenset()) -> list[str]:
    """Full names of the fields reachable from `desc` (bounded depth, recursion-safe)."""
    names = []
    for f in desc.fields:
        names.append(f.full_name)
        if f.message_type is not None and depth < 2 and f.message_type.full_name not in seen:
            names += _field_names(f.message_type, depth + 1, seen | {desc.full_name})
    return names


def _first_string_path(desc: _d.Descriptor, depth: int = 0) -> list[_d.FieldDescriptor] | None:
    for f in desc.fields:
        if f.type == FD.TYPE_STRING:
            return [f]
    if depth < 3:
        for f in desc.fields:
            if f.type == FD.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry:
                sub = _first_string_path(f.message_type, depth + 1)
                if sub:
                    return [f] + sub
    return None


def _nest(path: list[_d.FieldDescriptor], payload: bytes) -> bytes:
    for f in reversed(path):
        payload = _key(f.number, 2) + _varint(len(payload)) + payload
    return payload


def _minimal(f: _d.FieldDescriptor):
    """The smallest non-default value of a scalar field."""
    if f.type == FD.TYPE_STRING:
        return "a"
    if f.type == FD.TYPE_BYTES:
        return b"a"
    if f.type == FD.TYPE_BOOL:
        return True
    return 1


@dataclass(frozen=True)
class Case:
    label: str
    payload: bytes


def cases_for(method: Method, gen: Generator, hostile_cases: int, oversize_bytes: int) -> list[Case]:
    """The requests sent to one method."""
    rng = gen.rng
    cls = message_factory.GetMessageClass(method.input)
    cases = [Case("empty", b"")]
    for n in (1, 7, 64, 1024):
        cases.append(Case(f"garbage-{n}", bytes(rng.getrandbits(8) for _ in range(n))))
    cases.append(Case("truncated-varint", b"\x08\xff\xff\xff"))
    cases.append(Case("bad-wire-type", _key(1, 7) + b"\x01"))
    cases.append(Case("length-past-end", _key(1, 2) + _varint(1 << 30) + b"ab"))
    cases.append(Case("unknown-fields", _key(999, 0) + _varint(5) + _key(998, 2) + _varint(3) + b"abc"
                      + _key(997, 5) + b"\x00\x00\x00\x00" + _key(996, 1) + b"\x00" * 8))
    cases.append(Case("deep-groups", _key(995, 3) * 5000 + _key(995, 4) * 5000))
    path = _first_string_path(method.input)
    if path:
        cases.append(Case("invalid-utf8", _nest(path, b"\xc3\x28\xff")))
        cases.append(Case("oversized-string", _nest(path, b"x" * oversize_bytes)))
    repeated = next((f for f in method.input.fields if f.is_repeated and not
                     (f.message_type is not None and f.message_type.GetOptions().map_entry)), None)
    if repeated is not None:
        one = cls()
        if repeated.message_type is not None:
            getattr(one, repeated.name).add()
        else:
            getattr(one, repeated.name).append(_minimal(repeated))
        element = one.SerializeToString() or (_key(repeated.number, 2) + b"\x00")
        cases.append(Case(f"repeated-{repeated.name}-x20000", element * 20_000))
    fields = _field_names(method.input)
    for i in range(hostile_cases):
        message = cls()
        if i % 2 and fields:
            # One hostile field in an otherwise plausible request: it reaches the logic behind the checks
            # of the other fields.
            Generator(rng, gen.seeds, hostile_share=0.0, max_depth=gen.max_depth, target=rng.choice(fields)).fill(message)
        else:
            gen.fill(message)
        try:
            data = message.SerializeToString()
        except Exception as exc:  # noqa: BLE001 - a value the client library itself refuses
            raise AssertionError(f"could not build a {method.input.full_name}: {exc}") from exc
        cases.append(Case(f"hostile-{i}", data))
    plausible = cls()
    Generator(rng, gen.seeds, hostile_share=0.0, max_depth=gen.max_depth).fill(plausible)
    data = plausible.SerializeToString()
    cases.append(Case("plausible", data))
    if len(data) > 4:
        cases.append(Case("plausible-truncated", data[: len(data) // 2]))
    return cases


# --- running --------------------------------------------------------------------------------------------

@dataclass
class Report:
    calls: int = 0
    codes: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    #: (method path, outcome) -> calls
    by_method: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, method: Method, case: Case, outcome: str, details: str = "") -> None:
        self.calls += 1
        self.codes[outcome] += 1
        self.by_method[(method.path, outcome)] += 1

    def methods(self) -> set[str]:
        return {path for path, _ in self.by_method}

    def finding(self, method: Method, case: Case, what: str) -> None:
        self.findings.append(f"{method.path} [{case.label}, {len(case.payload)} bytes]: {what}")

    def summary(self) -> str:
        return (f"{self.calls} calls to {len(self.methods())} methods in {self.seconds:.1f}s; "
                f"codes: {dict(sorted(self.codes.items()))}; findings: {len(self.findings)}")


def call_once(channel: grpc.Channel, method: Method, payload: bytes, metadata, timeout: float) -> tuple[str, str, int]:
    """(outcome code name, details, messages received) of one raw call."""
    received = 0
    try:
        if method.client_streaming:
            requests = iter([payload])
            if method.server_streaming:
                call = channel.stream_stream(method.path, request_serializer=None, response_deserializer=None)
                stream = call(requests, timeout=timeout, metadata=metadata)
            else:
                call = channel.stream_unary(method.path, request_serializer=None, response_deserializer=None)
                call(requests, timeout=timeout, metadata=metadata)
                return "OK", "", 1
        elif method.server_streaming:
            call = channel.unary_stream(method.path, request_serializer=None, response_deserializer=None)
            stream = call(payload, timeout=timeout, metadata=metadata)
        else:
            call = channel.unary_unary(method.path, request_serializer=None, response_deserializer=None)
            call(payload, timeout=timeout, metadata=metadata)
            return "OK", "", 1
        # A stream: its first message shows it answers; then hang up (a live stream may go on for ever).
        for _ in stream:
            received += 1
            stream.cancel()
            break
        return "OK", "", received
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        if code == grpc.StatusCode.CANCELLED and received:
            return "OK", "", received
        return (code.name if code else "UNKNOWN"), details, received


def healthy(channel: grpc.Channel, service: str, timeout: float = 10.0) -> str:
    """'' when the server answers its health check SERVING, else what went wrong."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout)
    except grpc.RpcError as exc:
        return f"health check failed: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return ""


def fuzz(channel: grpc.Channel, *, seeds: dict[str, list] | None = None, metadata=None, seed: int = 20,
         hostile_cases: int = 25, timeout: float = 30.0, stream_timeout: float = 3.0,
         oversize_bytes: int = 5 * 1024 * 1024, methods: Iterable[Method] | None = None,
         cases_per_method: Callable[[Method], int] | None = None, report: Report | None = None,
         skip: Callable[[Method], bool] = lambda m: False) -> Report:
    """Fuzz every method the server's reflection lists (or `methods`); returns the report."""
    report = report or Report()
    began = time.monotonic()
    rng = random.Random(seed)
    gen = Generator(rng, dict(seeds or {}))
    for method in list(methods if methods is not None else discover(channel)):
        if skip(method):
            continue
        n = cases_per_method(method) if cases_per_method else hostile_cases
        health_name = "" if method.service in (HEALTH_SERVICE, REFLECTION_SERVICE) else method.service
        for case in cases_for(method, gen, n, oversize_bytes):
            started = time.monotonic()
            limit = stream_timeout if method.server_streaming else timeout
            outcome, details, received = call_once(channel, method, case.payload, metadata, limit)
            report.add(method, case, outcome, details)
            if outcome in (c.name for c in BAD_CODES):
                report.finding(method, case, f"{outcome}: {details[:300]}")
            elif outcome == "DEADLINE_EXCEEDED" and not (method.server_streaming and received):
                report.finding(method, case, f"no answer within {limit:g}s (hang) after "
                                             f"{time.monotonic() - started:.1f}s: {details[:200]}")
            elif outcome == "UNAVAILABLE":
                report.finding(method, case, f"UNAVAILABLE: {details[:300]}")
            problem = healthy(channel, health_name)
            if problem:
                report.finding(method, case, f"server unhealthy after the call: {problem}")
                report.seconds += time.monotonic() - began
                return report  # a dead server: every further call would only repeat it
    report.seconds += time.monotonic() - began
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("--token", default="", help="bearer token sent with every call")
    parser.add_argument("--cases", type=int, default=25, help="hostile requests per method")
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    with grpc.insecure_channel(args.address) as channel:
        report = fuzz(channel, metadata=metadata, seed=args.seed, hostile_cases=args.cases)
    print(report.summary())
    for line in report.findings:
        print("  " + line)
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
