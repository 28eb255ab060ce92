"""A stand-in for `leap trainer serve`, used by the trainer Job runner's tests.

Run as `python -m tests.deploy.fake_trainer trainer serve --port 0 --port-file F ...` (the arguments
trainer_job passes). StartJob persists nothing and "trains" in a moment: WatchJob streams two
progress updates, then the job ends SUCCEEDED with checkpoint <run_dir>/checkpoints/<name>/v1 (the
real trainer's layout), or FAILED when output_name is "fail", and StartJob answers INVALID_ARGUMENT
when output_name is "invalid". The real trainer needs torch and a model; its own tests cover it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from leap.v1 import common_pb2
from leap.v1 import trainer_pb2 as pb
from leap.v1 import trainer_pb2_grpc as pb_grpc
from services.runtime.config import ServerConfig
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.server import Registration, serve_forever


class FakeTrainer(pb_grpc.TrainerServiceServicer):
    def __init__(self):
        self.jobs: dict[str, pb.Job] = {}
        self.lock = threading.Lock()

    def StartJob(self, request, context):
        if request.output_name == "invalid":
            raise InvalidArgument("output_name 'invalid' is not allowed")
        job = pb.Job(job_id=request.job_id or "job-1", spec=request, state=pb.JOB_STATE_RUNNING,
                     created_at=time.time())
        with self.lock:
            self.jobs[job.job_id] = job
        return job

    def _final(self, job: pb.Job) -> pb.Job:
        out = pb.Job()
        out.CopyFrom(job)
        out.progress.CopyFrom(pb.JobProgress(job_id=job.job_id, step=2, total_steps=2, loss=0.5))
        if job.spec.output_name == "fail":
            out.state = pb.JOB_STATE_FAILED
            out.error = "training diverged: loss is NaN at step 2"
        else:
            out.state = pb.JOB_STATE_SUCCEEDED
            out.checkpoint.CopyFrom(common_pb2.CheckpointRef(
                name=job.spec.output_name, version="v1", uri=f"{job.spec.run_dir}/checkpoints/{job.spec.output_name}/v1",
                base_model=job.spec.base_model))
        return out

    def WatchJob(self, request, context):
        job = self.GetJob(request, context)
        if job.spec.output_name == "slow":  # a training that runs until the pod is stopped
            yield pb.JobProgress(job_id=job.job_id, state=pb.JOB_STATE_RUNNING, step=1, total_steps=1000, loss=1.0)
            while context.is_active():
                time.sleep(0.1)
            return
        for step in (1, 2):
            yield pb.JobProgress(job_id=job.job_id, state=pb.JOB_STATE_RUNNING, step=step, total_steps=2, loss=1.0 / step)
        with self.lock:
            self.jobs[job.job_id] = self._final(job)
            final = self.jobs[job.job_id]
        yield pb.JobProgress(job_id=final.job_id, state=final.state, step=2, total_steps=2, loss=0.5)

    def GetJob(self, request, context):
        with self.lock:
            job = self.jobs.get(request.job_id)
        if job is None:
            raise NotFound(f"unknown job {request.job_id}")
        return job


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("words", nargs="*")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default="")
    args, _unknown = parser.parse_known_args(argv)
    assert args.words == ["trainer", "serve"], args.words
    config = ServerConfig(host=args.host, port=args.port, port_file=args.port_file, grace_seconds=1,
                          log_format="text")
    return serve_forever(config, [Registration("leap.v1.TrainerService", pb_grpc.add_TrainerServiceServicer_to_server,
                                               FakeTrainer())], label="fake-trainer")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
