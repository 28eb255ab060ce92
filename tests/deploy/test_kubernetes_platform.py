"""orchestrator.platforms.kubernetes against a fake API server (tests/deploy/fake_kube_api.py) and
real gRPC student replicas on loopback (tests/deploy/fake_student.py: the adapter lifecycle of
StudentService only, since a real student needs a model).

What runs for real: the `kubernetes` client (HTTP, JSON, watch streams), the Job manifest the code
builds, the gRPC calls to every replica. What is played by the test: the Job controller and the
kubelet (a Job's pod succeeding, failing, being OOM-killed or unable to pull its image).
"""

from __future__ import annotations

import json
import threading
from functools import partial

import grpc
import pytest
import yaml

from leap.v1 import common_pb2, student_pb2, student_pb2_grpc, trainer_pb2
from orchestrator.platforms.hot_swap import HotSwapError
from orchestrator.platforms.kubernetes import (
    DESIRED_CONFIGMAP,
    GPU_RESOURCE,
    JOB_ID_LABEL,
    RUN_LABEL,
    KubernetesError,
    KubernetesPlatform,
    TrainerJobFailed,
    dns_label,
    trainer_job_name,
)
from tests.deploy import kube_helpers
from tests.deploy.fake_student import start_replica
from tests.deploy.kube_helpers import NS, ROOT, RUN_DIR


def trainer_template(gpus: int = 0) -> dict:
    template = kube_helpers.trainer_template("registry.example/leap-serve/trainer:0.1.0-cuda")
    container = template["template"]["spec"]["containers"][0]
    if gpus:
        for kind in ("requests", "limits"):
            container["resources"][kind][GPU_RESOURCE] = str(gpus)
    return template


def request(output_name: str = "student") -> trainer_pb2.StartJobRequest:
    return trainer_pb2.StartJobRequest(
        method=trainer_pb2.TRAINING_METHOD_SFT, base_model="smollm2", output_name=output_name, run_dir=RUN_DIR,
        datasets=[common_pb2.ArtifactRef(uri=f"{RUN_DIR}/datasets/train-iter1-sft.jsonl", sha256="ab" * 32,
                                         format="jsonl")],
        hyper_parameters=trainer_pb2.HyperParameters(lora_r=16, learning_rate=3e-4, seed=7))


def desired_configmap() -> dict:
    """The ConfigMap as the platform overlay creates it (no record yet)."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "base" / "workload" / "student.yaml").read_text()))
    cm = next(d for d in docs if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == DESIRED_CONFIGMAP)
    cm["metadata"]["namespace"] = NS
    return cm


def result_message(job_id: str, version: str = "v1") -> str:
    return json.dumps({"job_id": job_id, "state": "JOB_STATE_SUCCEEDED",
                       "checkpoint": {"name": "student", "version": version,
                                      "uri": f"{RUN_DIR}/checkpoints/student/{version}", "base_model": "smollm2"},
                       "progress": {"step": 10, "total_steps": 10, "loss": 0.42}})


@pytest.fixture()
def kube():
    yield from kube_helpers.running_kube(trainer_template(), desired_configmap())


make_platform = partial(kube_helpers.make_platform, watch_seconds=2, settle_timeout_s=3.0, swap_backoff_s=0.05)


def later(seconds: float, fn, *args, **kwargs) -> None:
    timer = threading.Timer(seconds, fn, args=args, kwargs=kwargs)
    timer.daemon = True
    timer.start()


# ---------------------------------------------------------------------------------- trainer Jobs
def test_trainer_job_is_created_with_the_right_spec_and_its_completion_is_followed(kube):
    platform = make_platform(kube, gpus=1, backoff_limit=2, ttl_seconds_after_finished=3600)
    job_id = "0a1b2c3d-iter1-a1"
    name = trainer_job_name(job_id)

    def controller(job):  # the Job runs for a moment, then succeeds with the runner's result
        later(0.2, kube.start_job, job["metadata"]["name"])
        later(0.6, kube.finish_job, job["metadata"]["name"], succeeded=True, message=result_message(job_id))

    kube.on_job_created = controller
    statuses: list[str] = []
    job = platform.train(request(), job_id=job_id, run="k8s-household-0a1b2c3d", on_status=statuses.append)

    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert (job.checkpoint.version, job.checkpoint.uri) == ("v1", f"{RUN_DIR}/checkpoints/student/v1")
    assert job.progress.loss == pytest.approx(0.42)
    assert statuses and statuses[0].startswith(f"Job {name}")

    (post,) = kube.calls("POST", r"/jobs$")
    body = post.body
    assert post.path == f"/apis/batch/v1/namespaces/{NS}/jobs"
    assert body["metadata"]["name"] == name == "leap-train-0a1b2c3d-iter1-a1"
    labels = body["metadata"]["labels"]
    assert labels[RUN_LABEL] == "k8s-household-0a1b2c3d" and labels[JOB_ID_LABEL] == job_id
    assert labels["app.kubernetes.io/name"] == "leap-trainer"
    spec = body["spec"]
    assert spec["backoffLimit"] == 2 and spec["ttlSecondsAfterFinished"] == 3600
    assert spec["activeDeadlineSeconds"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                             "values": [2]}}
    assert spec["template"]["metadata"]["labels"][RUN_LABEL] == "k8s-household-0a1b2c3d"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/leap-serve/trainer:0.1.0-cuda"
    assert container["command"] == ["python", "-m", "orchestrator.platforms.trainer_job"]
    args = container["args"]
    assert args[0] == "--request-json" and args[2:] == ["--runs-dir", "/runs"]
    sent = trainer_pb2.StartJobRequest()
    from google.protobuf import json_format

    json_format.ParseDict(json.loads(args[1]), sent)
    expected = request()
    expected.job_id = job_id
    assert sent == expected, "the Job carries the request, with its job id, by reference to the runs volume"
    assert container["resources"]["limits"][GPU_RESOURCE] == "1"
    assert container["resources"]["requests"][GPU_RESOURCE] == "1"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims[mounts["/runs"]] == "leap-runs"
    # It was followed with a watch, not a busy loop.
    assert kube.calls("GET", r"/jobs$") and all(c.query.get("watch") == "true" for c in kube.calls("GET", r"/jobs$"))


def test_gpu_setting_zero_removes_gpus_and_none_keeps_the_templates(kube):
    kube.add_pod_template(trainer_template(gpus=2), NS)  # replaces the CPU one
    for gpus, expected in ((0, None), (None, "2")):
        platform = make_platform(kube, gpus=gpus)
        job_id = f"gpu-{gpus}"
        platform.submit_trainer_job(request(), job_id=job_id, run="r")
        job = kube.job(trainer_job_name(job_id))
        resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"].get(GPU_RESOURCE) == expected
        assert resources["requests"].get(GPU_RESOURCE) == expected


def test_job_failure_is_reported_with_reason_exit_code_message_and_last_log_lines(kube):
    platform = make_platform(kube)
    job_id = "run1-iter2-a1"
    logs = "\n".join(f"line {i}" for i in range(1, 31))
    message = json.dumps({"job_id": job_id, "state": "JOB_STATE_FAILED",
                          "error": "training diverged: loss is NaN at step 12"})
    kube.on_job_created = lambda job: later(0.3, kube.finish_job, job["metadata"]["name"], succeeded=False,
                                            exit_code=1, message=message, logs=logs)
    with pytest.raises(TrainerJobFailed) as err:
        platform.train(request(), job_id=job_id, run="run1")
    text = str(err.value)
    assert "trainer Job leap-train-run1-iter2-a1 failed (BackoffLimitExceeded" in text
    assert "container exited 1 (Error): training diverged: loss is NaN at step 12" in text
    assert "line 30" in text and "line 11" in text and "line 10\n" not in text, "the last 20 log lines"
    assert err.value.exit_code == 1 and err.value.logs.endswith("line 30")
    (log_call,) = kube.calls("GET", r"/log$")
    assert log_call.query["tailLines"] == "20" and log_call.query["container"] == "trainer"


def test_an_oom_killed_trainer_says_so(kube):
    platform = make_platform(kube)
    kube.on_job_created = lambda job: later(0.2, kube.finish_job, job["metadata"]["name"], succeeded=False,
                                            exit_code=137, reason="OOMKilled", message="", logs="step 3/10")
    with pytest.raises(TrainerJobFailed) as err:
        platform.train(request(), job_id="oom-a1", run="r")
    assert "exited 137 (OOMKilled)" in str(err.value) and "step 3/10" in str(err.value)
    assert err.value.reason == "OOMKilled"


def test_a_pod_that_cannot_pull_its_image_fails_the_training_instead_of_hanging(kube):
    platform = make_platform(kube)
    kube.on_job_created = lambda job: later(0.1, kube.stick_pod, job["metadata"]["name"], "ImagePullBackOff",
                                            message='Back-off pulling image "leap-serve/trainer:0.1.0-cuda"')
    with pytest.raises(TrainerJobFailed) as err:
        platform.train(request(), job_id="nopull-a1", run="r", timeout_s=30)
    assert "ImagePullBackOff" in str(err.value) and "leap-serve/trainer:0.1.0-cuda" in str(err.value)


def test_a_resumed_orchestrator_adopts_its_running_job_instead_of_creating_another(kube):
    platform = make_platform(kube)
    job_id = "resume-iter1-a1"
    name = platform.submit_trainer_job(request(), job_id=job_id, run="r")
    kube.start_job(name)
    later(0.3, kube.finish_job, name, succeeded=True, message=result_message(job_id, "v3"))
    job = platform.train(request(), job_id=job_id, run="r")  # the orchestrator restarted
    assert job.checkpoint.version == "v3"
    posts = kube.calls("POST", r"/jobs$")
    assert len(posts) == 2 and len(kube.items("jobs", NS)) == 1, "second create got 409 and followed the first"


def test_success_without_a_result_is_an_error_not_a_silent_pass(kube):
    platform = make_platform(kube)
    kube.on_job_created = lambda job: later(0.1, kube.finish_job, job["metadata"]["name"], succeeded=True,
                                            message="all done")
    with pytest.raises(TrainerJobFailed, match="left no result"):
        platform.train(request(), job_id="noresult-a1", run="r")


def test_missing_template_and_paths_off_the_runs_volume_are_explained(kube):
    platform = make_platform(kube, trainer_template="leap-trainer-missing")
    with pytest.raises(KubernetesError, match="apply an overlay first"):
        platform.submit_trainer_job(request(), job_id="x", run="r")
    platform = make_platform(kube)
    bad = request()
    bad.run_dir = "/home/me/runs/x"
    with pytest.raises(ValueError, match="not on the runs volume"):
        platform.submit_trainer_job(bad, job_id="x", run="r")
    assert not kube.calls("POST", r"/jobs$")


def test_a_deleted_job_counts_as_a_failed_attempt(kube):
    platform = make_platform(kube)

    def delete(job):
        with kube.cond:
            del kube.objects[("jobs", NS, job["metadata"]["name"])]

    kube.on_job_created = lambda job: later(0.2, delete, job)
    with pytest.raises(TrainerJobFailed, match="disappeared"):
        platform.train(request(), job_id="gone-a1", run="r", timeout_s=30)


def test_config_comes_from_the_kubeconfig_outside_a_cluster(kube, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("LEAP_NAMESPACE", raising=False)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "fake", "user": "me", "namespace": NS}}]}))
    kube.set_student_endpoints([("10.1.2.3", 50061, True)])
    platform = KubernetesPlatform.from_environment(kubeconfig=str(kubeconfig))
    assert platform.namespace == NS
    assert platform.student_endpoints() == (["10.1.2.3:50061"], [])
    monkeypatch.setenv("LEAP_NAMESPACE", "elsewhere")
    monkeypatch.setenv("LEAP_K8S_GPUS", "2")
    platform = KubernetesPlatform.from_environment(kubeconfig=str(kubeconfig))
    assert platform.namespace == "elsewhere" and platform.settings.gpus == 2
    with pytest.raises(KubernetesError, match="no Kubernetes access"):
        KubernetesPlatform.from_environment(kubeconfig=str(tmp_path / "missing"))


def test_names_and_labels_are_valid_kubernetes_names():
    assert trainer_job_name("Run_1/iter 2") == "leap-train-run-1-iter-2"
    long = dns_label("x" * 100)
    assert len(long) <= 63 and long[-9] == "-"
    assert dns_label("x" * 100) != dns_label("x" * 99 + "y")


# ---------------------------------------------------------------------------------- student replicas
@pytest.fixture()
def replicas():
    started = []

    def start(**knobs):
        host, servicer = start_replica(**knobs)
        started.append(host)
        return host.port, servicer

    yield start
    for host in started:
        host.stop(grace=0)


def checkpoint(version: str = "student-iter-1") -> common_pb2.CheckpointRef:
    return common_pb2.CheckpointRef(name="student", version=version, uri=f"{RUN_DIR}/checkpoints/student/v1",
                                    base_model="smollm2")


def current_version(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return student_pb2_grpc.StudentServiceStub(ch).ListAdapters(student_pb2.ListAdaptersRequest(),
                                                                    timeout=5).current_version


def test_student_replicas_are_discovered_from_endpointslices_or_endpoints(kube):
    kube.set_student_endpoints([("10.0.0.5", 50061, True), ("10.0.0.6", 50061, False), ("10.0.0.7", 50061, True)])
    platform = make_platform(kube)
    assert platform.student_endpoints() == (["10.0.0.5:50061", "10.0.0.7:50061"], ["10.0.0.6:50061"])
    (call,) = kube.calls("GET", r"/endpointslices$")
    assert call.query["labelSelector"] == "kubernetes.io/service-name=leap-student"
    kube.endpointslices_enabled = False  # an old cluster: Endpoints instead
    assert platform.student_endpoints() == (["10.0.0.5:50061", "10.0.0.7:50061"], ["10.0.0.6:50061"])


def test_hot_swap_reaches_every_replica_retries_a_busy_one_and_confirms_the_version(kube, replicas):
    ports = [replicas()[0], replicas(unavailable_loads=1)[0], replicas()[0]]
    busy = ports[1]
    kube.set_student_endpoints([("127.0.0.1", p, True) for p in ports])
    platform = make_platform(kube)
    report = platform.hot_swap(checkpoint())
    assert report.ok and sorted(r.address for r in report.replicas) == sorted(f"127.0.0.1:{p}" for p in ports)
    attempts = {r.address: r.attempts for r in report.replicas}
    assert attempts[f"127.0.0.1:{busy}"] == 2 and sum(attempts.values()) == 4
    assert [current_version(p) for p in ports] == ["student-iter-1"] * 3
    # Doing it again loads nothing (a resumed run, or a check before a phase).
    again = platform.hot_swap(checkpoint())
    assert all(r.already_loaded for r in again.replicas)


def test_hot_swap_reports_a_replica_that_refuses_after_trying_the_others(kube, replicas):
    good, _ = replicas()
    bad, bad_servicer = replicas(refuse=True)
    kube.set_student_endpoints([("127.0.0.1", good, True), ("127.0.0.1", bad, True)])
    with pytest.raises(HotSwapError) as err:
        make_platform(kube).hot_swap(checkpoint())
    report = err.value.report
    (failed,) = report.failed
    assert failed.address == f"127.0.0.1:{bad}" and "FAILED_PRECONDITION" in failed.error
    assert failed.attempts == 1 and len(bad_servicer.load_calls) == 1, "a definite refusal is not retried"
    assert f"127.0.0.1:{bad} failed" in str(err.value) and "1/2 student replicas confirmed" in str(err.value)
    assert current_version(good) == "student-iter-1" and current_version(bad) == "base"


def test_hot_swap_waits_for_a_starting_replica_then_includes_it(kube, replicas):
    a, _ = replicas()
    b, _ = replicas()
    kube.set_student_endpoints([("127.0.0.1", a, True), ("127.0.0.1", b, False)])
    later(0.4, kube.set_student_endpoints, [("127.0.0.1", a, True), ("127.0.0.1", b, True)])
    waits: list[str] = []
    report = make_platform(kube).hot_swap(checkpoint(), on_status=waits.append)
    assert report.ok and len(report.replicas) == 2
    assert waits and "waiting for 1 student replica" in waits[0]


def test_hot_swap_with_a_replica_that_never_gets_ready_fails_naming_it(kube, replicas):
    a, _ = replicas()
    kube.set_student_endpoints([("127.0.0.1", a, True), ("10.9.9.9", 50061, False)])
    platform = make_platform(kube, settle_timeout_s=0.3)
    with pytest.raises(HotSwapError, match=r"10\.9\.9\.9:50061 failed after 0 attempt\(s\): not ready"):
        platform.hot_swap(checkpoint())
    assert current_version(a) == "student-iter-1"


def test_no_replica_at_all_is_an_error(kube):
    kube.set_student_endpoints([])
    with pytest.raises(HotSwapError, match="no student replica"):
        make_platform(kube).hot_swap(checkpoint())


# ---------------------------------------------------------------------------------- as a run's platform
def test_a_run_on_kubernetes_trains_with_jobs_retrying_a_failed_one_and_swaps_on_every_replica(kube, replicas,
                                                                                                  tmp_path):
    from orchestrator.config import load_config
    from orchestrator.loop import LeapRun
    from orchestrator.progress import ProgressReporter

    config = load_config(preset="smoke")
    platform = make_platform(kube)
    leap = LeapRun(config, tmp_path / "run", stubs=None, reporter=ProgressReporter(enabled=False), platform=platform)
    run_id = leap.state.values["run_id"]
    base_id = f"{run_id}-iter1"

    def controller(job):
        name = job["metadata"]["name"]
        if name.endswith("-a1"):  # the first attempt dies; the run retries with a new job id
            later(0.2, kube.finish_job, name, succeeded=False, exit_code=1, message="", logs="Killed")
        else:
            later(0.2, kube.finish_job, name, succeeded=True, message=result_message(f"{base_id}-a2", "v2"))

    kube.on_job_created = controller
    job = leap._run_training_job(base_id, request(), "iter1: train (sft)")
    assert job.checkpoint.version == "v2" and job.job_id == f"{base_id}-a2"
    assert [c.body["metadata"]["name"] for c in kube.calls("POST", r"/jobs$")] == [
        trainer_job_name(f"{base_id}-a1"), trainer_job_name(f"{base_id}-a2")]
    assert kube.job(trainer_job_name(f"{base_id}-a1"))["metadata"]["labels"][RUN_LABEL] == dns_label(f"smoke-{run_id}")

    ports = [replicas()[0], replicas()[0]]
    kube.set_student_endpoints([("127.0.0.1", p, True) for p in ports])
    leap.state.values["checkpoints"] = {"1": {"name": "student", "version": "v2", "uri": f"{RUN_DIR}/checkpoints/student/v2",
                                              "sha256": "", "base_model": "smollm2"}}
    assert leap._load(1)["version"] == "student-iter-1"
    assert [current_version(p) for p in ports] == ["student-iter-1"] * 2


def test_a_run_on_kubernetes_gives_up_after_its_attempts_with_the_last_error(kube, tmp_path):
    from orchestrator.config import load_config
    from orchestrator.loop import LeapRun
    from orchestrator.progress import ProgressReporter

    config = load_config(preset="smoke", overrides={"retry": {"train_attempts": 2}})
    leap = LeapRun(config, tmp_path / "run", stubs=None, reporter=ProgressReporter(enabled=False),
                   platform=make_platform(kube))
    kube.on_job_created = lambda job: later(0.1, kube.finish_job, job["metadata"]["name"], succeeded=False,
                                            exit_code=1, message='{"state":"JOB_STATE_FAILED","error":"no GPU"}')
    with pytest.raises(RuntimeError, match="failed 2 times on Kubernetes.*no GPU"):
        leap._run_training_job("r-iter0", request(), "iter0: train")
    assert len(kube.calls("POST", r"/jobs$")) == 2
