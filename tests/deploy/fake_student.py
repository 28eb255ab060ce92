"""A test double of one student replica: StudentService's LoadAdapter and ListAdapters only.

The real student loads a language model before it serves (tens of seconds, gigabytes); the hot swap
code only needs the adapter lifecycle, so these replicas keep adapters in a dict. They run on the
shared runtime (services.runtime.server), over real gRPC on loopback, so status codes, health and
deadlines behave as in production. Knobs: `unavailable_loads` (the first N LoadAdapter calls answer
UNAVAILABLE, then it works), `refuse` (every LoadAdapter answers FAILED_PRECONDITION, as for a
corrupt adapter), `load_without_switch` (loads but never makes the version current).
"""

from __future__ import annotations

import threading

from leap.v1 import student_pb2 as pb
from leap.v1 import student_pb2_grpc as pb_grpc
from services.runtime.config import ServerConfig
from services.runtime.errors import AlreadyExists, FailedPrecondition, Unavailable
from services.runtime.server import Registration, ServiceHost

NAME = "leap.v1.StudentService"


class FakeStudent(pb_grpc.StudentServiceServicer):
    def __init__(self, *, unavailable_loads: int = 0, refuse: bool = False, load_without_switch: bool = False):
        self.lock = threading.Lock()
        self.adapters: dict[str, pb.AdapterInfo] = {"base": pb.AdapterInfo(version="base")}
        self.current = "base"
        self.unavailable_loads = unavailable_loads
        self.refuse = refuse
        self.load_without_switch = load_without_switch
        self.load_calls: list[pb.LoadAdapterRequest] = []

    def LoadAdapter(self, request, context):
        with self.lock:
            self.load_calls.append(request)
            version = request.checkpoint.version
            if self.unavailable_loads > 0:
                self.unavailable_loads -= 1
                raise Unavailable("replica busy: try again")
            if self.refuse:
                raise FailedPrecondition(f"adapter at {request.checkpoint.uri} is corrupt; the current version keeps serving")
            known = self.adapters.get(version)
            if known is not None and known.checkpoint.uri != request.checkpoint.uri:
                raise AlreadyExists(f"version {version} is loaded with other weights")
            info = pb.AdapterInfo(version=version, checkpoint=request.checkpoint, load_seconds=0.01)
            self.adapters[version] = info
            if not request.keep_current and not self.load_without_switch:
                self.current = version
            return pb.AdapterInfo(version=version, checkpoint=request.checkpoint, current=self.current == version,
                                  load_seconds=0.01)

    def ListAdapters(self, request, context):
        with self.lock:
            return pb.ListAdaptersResponse(current_version=self.current, adapters=[
                pb.AdapterInfo(version=v, checkpoint=a.checkpoint, current=v == self.current)
                for v, a in self.adapters.items()])


def start_replica(**knobs) -> tuple[ServiceHost, FakeStudent]:
    servicer = FakeStudent(**knobs)
    host = ServiceHost(ServerConfig(host="127.0.0.1", port=0, grace_seconds=0),
                       [Registration(NAME, pb_grpc.add_StudentServiceServicer_to_server, servicer)],
                       label="fake-student")
    host.start()
    return host, servicer
