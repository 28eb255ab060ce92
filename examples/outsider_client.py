"""An outsider's client of LEAP-serve, written from the .proto files alone.

It generates its gRPC stubs from protos/ at start (grpcio-tools), imports nothing of the LEAP-serve code
base, plays one episode on the environment service with a naive policy, and asks the teacher service to
correct it, step by step. It needs only `pip install grpcio grpcio-tools protobuf`.

    python examples/outsider_client.py --env-addr localhost:50051 --teacher-addr localhost:50071
    python examples/outsider_client.py ... --tls-ca ca.crt --tls-client-cert me.crt --tls-client-key me.key
    python examples/outsider_client.py ... --save my_episode.json     # a file `leap teacher correct` reads

The teacher holds the privileged credential and fetches privileged state itself: this client never
sees (or sends) any of it. Exit code: 0 when the teacher returned a valid correction, 1 when it could
not, 2 for a bad argument or a refused request.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROTOS = HERE.parent / "protos"


def generate_stubs(proto_root: Path, out_dir: Path):
    """Compile every leap/v1/*.proto under proto_root into out_dir and import the modules from there."""
    import grpc_tools
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "leap" / "v1").glob("*.proto"))
    if not sources:
        raise SystemExit(f"error: no leap/v1/*.proto under {proto_root}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("error: protoc failed")
    for package in (out_dir / "leap", out_dir / "leap" / "v1"):
        (package / "__init__.py").touch()
    sys.path.insert(0, str(out_dir))
    modules = {name: importlib.import_module(f"leap.v1.{name}") for name in
               ("common_pb2", "environment_pb2", "environment_pb2_grpc", "teacher_pb2", "teacher_pb2_grpc")}
    # Prove the point of this example: the stubs are the ones just generated, not an installed package.
    for module in modules.values():
        if not Path(module.__file__).resolve().is_relative_to(out_dir.resolve()):
            raise SystemExit(f"error: {module.__name__} came from {module.__file__}, not from the generated stubs")
    return modules


def channel_to(address: str, args):
    import grpc

    if not (args.tls_ca or args.tls_client_cert):
        return grpc.insecure_channel(address)
    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(root_certificates=read(args.tls_ca),
                                               private_key=read(args.tls_client_key),
                                               certificate_chain=read(args.tls_client_cert))
    return grpc.secure_channel(address, credentials)


def naive_policy(task_id: str, step: int, candidates: list[str]) -> str:
    """A deterministic stand-in for a model: some candidate, chosen by a hash of the task and the step."""
    if not candidates:
        return "look"
    digest = hashlib.sha256(f"{task_id}/{step}".encode()).digest()
    return candidates[digest[0] % len(candidates)]


def play(pb, common, env_stub, args):
    """One episode, as a leap.v1.Trajectory."""
    reset = env_stub.Reset(pb.ResetRequest(env=args.env, task_id=args.task_id, split="" if args.task_id else args.split,
                                           seed=args.seed), timeout=args.timeout)
    # TaskInfo.goal is the bare instruction ("put a clean apple in fridge."): Trajectory.goal takes it as is.
    trajectory = common.Trajectory(task=reset.task.task, goal=reset.task.goal, task_type=reset.task.task_type,
                                   agent="outsider-example")
    observation = reset.observation
    try:
        for t in range(args.steps):
            if observation.done:
                break
            action = naive_policy(reset.task.task.task_id, t, list(observation.candidates))
            after = env_stub.Step(pb.StepRequest(session_id=reset.session_id, action=action),
                                  timeout=args.timeout).observation
            trajectory.steps.add(index=t, observation=observation.text, candidates=list(observation.candidates),
                                 action=action, reward=after.reward, action_valid=after.last_action_valid,
                                 next_observation=after.text)
            observation = after
    finally:
        env_stub.Close(pb.CloseRequest(session_id=reset.session_id), timeout=args.timeout)
    trajectory.done, trajectory.won = observation.done, observation.won
    trajectory.score, trajectory.truncated = observation.score, observation.truncated
    return trajectory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-addr", required=True, help="the environment's EnvironmentService, host:port")
    parser.add_argument("--teacher-addr", required=True, help="the teacher's TeacherService, host:port")
    parser.add_argument("--protos", default=str(DEFAULT_PROTOS), help="folder holding leap/v1/*.proto")
    parser.add_argument("--env", default="household")
    parser.add_argument("--task-id", default="", help="a task id from ListTasks (default: --split and --seed)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5, help="actions to take at most")
    parser.add_argument("--level", type=int, default=None,
                        help="realizability level 0/25/50/75/100 (unset: the teacher's default, 50)")
    parser.add_argument("--save", default="", help="write the played trajectory here (JSON)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--tls-ca", default="", help="CA certificate that signed the servers (turns TLS on)")
    parser.add_argument("--tls-client-cert", default="", help="client certificate, for mutual TLS")
    parser.add_argument("--tls-client-key", default="", help="its key")
    args = parser.parse_args(argv)
    if bool(args.tls_client_cert) != bool(args.tls_client_key):
        parser.error("--tls-client-cert and --tls-client-key go together")

    import grpc
    from google.protobuf import json_format

    with tempfile.TemporaryDirectory(prefix="leap-stubs-") as tmp:
        stubs = generate_stubs(Path(args.protos), Path(tmp))
        pb, common, teacher_pb = stubs["environment_pb2"], stubs["common_pb2"], stubs["teacher_pb2"]
        try:
            with channel_to(args.env_addr, args) as env_channel, channel_to(args.teacher_addr, args) as teacher_channel:
                env_stub = stubs["environment_pb2_grpc"].EnvironmentServiceStub(env_channel)
                teacher = stubs["teacher_pb2_grpc"].TeacherServiceStub(teacher_channel)
                trajectory = play(pb, common, env_stub, args)
                print(f"played {trajectory.task.env}/{trajectory.task.task_id}: {trajectory.goal!r}, "
                      f"{len(trajectory.steps)} steps, won={trajectory.won}")
                if args.save:
                    Path(args.save).write_text(json_format.MessageToJson(trajectory, indent=2) + "\n", encoding="utf-8")
                    print(f"saved the trajectory to {args.save}")
                options = teacher_pb.CorrectionOptions()
                if args.level is not None:  # proto3 `optional`: unset means the teacher's default (50)
                    options.realizability_level = args.level
                correction = teacher.Correct(teacher_pb.CorrectRequest(trajectory=trajectory, options=options),
                                             timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            print(f"error: {code.name if code else 'UNKNOWN'}: {exc.details()}", file=sys.stderr)
            return 2 if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1
    if not correction.ok:
        print(f"the teacher could not correct it: {correction.error}")
        return 1
    print(f"teacher {correction.teacher} at realizability level {correction.realizability_level}: "
          f"{correction.summary}")
    for step in correction.steps:
        mark = "->" if step.is_corrected else "=="
        print(f"  t={step.index}: {step.original_action!r} {mark} {step.action!r}  ({step.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
