"""Trainer Jobs belong to the run: owned by its Job, deleted with it, cancelled on SIGTERM; and the
orchestrator's Role grants exactly the calls the platform code makes.

Against tests/deploy/fake_kube_api.py (the real `kubernetes` client; the fake plays the API server's
ownerReference validation and the garbage collector, as they behave in a cluster).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial

import pytest
import yaml

from leap.v1 import common_pb2, trainer_pb2
from orchestrator.platforms.kubernetes import (
    DESIRED_CONFIGMAP,
    RUN_LABEL,
    KubernetesError,
    TrainerJobFailed,
    dns_label,
    trainer_job_name,
)
from services.student.desired_adapter import parse_record
from tests.deploy import kube_helpers
from tests.deploy.fake_kube_api import FakeKube
from tests.deploy.kube_helpers import NS, ROOT, RUN_DIR, trainer_template
from tests.deploy.rbac import rbac_allows

ORCHESTRATOR_SA = f"system:serviceaccount:{NS}:leap-orchestrator"
TRAINER_IMAGE = "registry.example/leap-serve/trainer:0.1.0-cpu@sha256:" + "ab" * 32


def request() -> trainer_pb2.StartJobRequest:
    return trainer_pb2.StartJobRequest(method=trainer_pb2.TRAINING_METHOD_SFT, base_model="smollm2",
                                       output_name="student", run_dir=RUN_DIR)


def run_job(kube: FakeKube, name: str = "leap-run") -> dict:
    """The run's own Job, as `kubectl apply -k deploy/run` creates it."""
    job = yaml.safe_load((ROOT / "deploy" / "run" / "orchestrator-job.yaml").read_text())
    job["metadata"]["namespace"] = NS
    job["metadata"]["name"] = name
    return kube.put("jobs", job)


@pytest.fixture()
def kube():
    yield from kube_helpers.running_kube(trainer_template(TRAINER_IMAGE), {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": DESIRED_CONFIGMAP, "namespace": NS}})


make_platform = partial(kube_helpers.make_platform, watch_seconds=1)


def delete_job(kube: FakeKube, name: str, propagation: str = "Background") -> None:
    """`kubectl delete job NAME` (kubectl's default cascade is background)."""
    from kubernetes import client

    client.BatchV1Api(kube.api_client()).delete_namespaced_job(
        name, NS, body=client.V1DeleteOptions(propagation_policy=propagation))


# ---------------------------------------------------------------------------------- ownership
@pytest.mark.parametrize("uid_from", ["downward API", "a read of the Job"])
def test_deleting_the_run_deletes_its_trainer_jobs_and_their_pods(kube, uid_from):
    owner = run_job(kube)
    uid = owner["metadata"]["uid"] if uid_from == "downward API" else ""
    platform = make_platform(kube, owner_job_name="leap-run", owner_job_uid=uid)
    running = platform.submit_trainer_job(request(), job_id="r1-iter1-a1", run="k8s-household-r1")
    kube.start_job(running)
    queued = platform.submit_trainer_job(request(), job_id="r1-iter2-a1", run="k8s-household-r1")
    for name in (running, queued):
        refs = kube.job(name)["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "batch/v1", "kind": "Job", "name": "leap-run", "uid": owner["metadata"]["uid"]}]
    unrelated = kube.put("jobs", {"apiVersion": "batch/v1", "kind": "Job", "spec": {},
                                  "metadata": {"name": "someone-elses", "namespace": NS}})
    assert {k[2] for k in kube.objects if k[0] == "jobs"} == {"leap-run", running, queued, "someone-elses"}

    delete_job(kube, "leap-run")
    left = {(k[0], k[2]) for k in kube.objects if k[0] in ("jobs", "pods")}
    assert left == {("jobs", unrelated["metadata"]["name"])}, "trainer Jobs and their pods went with the run"
    with pytest.raises(TrainerJobFailed, match="disappeared"):
        platform.wait_for_job(running, timeout_s=10)


def test_an_owner_reference_with_a_wrong_uid_would_lose_the_job_so_the_uid_is_the_real_one(kube):
    run_job(kube)
    # A stale uid (the run's Job was re-created): the garbage collector takes the trainer Job at once.
    stale = make_platform(kube, owner_job_name="leap-run", owner_job_uid="00000000-dead-beef-0000-000000000000")
    name = stale.submit_trainer_job(request(), job_id="stale-a1", run="r")
    assert kube.get("jobs", NS, name) is None
    # Without an owner (run from a laptop), the Job has no ownerReferences and stays.
    name = make_platform(kube).submit_trainer_job(request(), job_id="free-a1", run="r")
    assert "ownerReferences" not in kube.job(name)["metadata"]


def test_a_placeholder_trainer_image_is_refused_before_any_job_is_created(kube):
    kube.add_pod_template(trainer_template("registry.invalid/leap-serve/trainer:0.1.0-cpu@sha256:" + "0" * 64), NS)
    with pytest.raises(KubernetesError, match="placeholder image registry.invalid/leap-serve/trainer"):
        make_platform(kube).submit_trainer_job(request(), job_id="x-a1", run="r")
    assert not kube.calls("POST", r"/jobs$")
    # An explicit image (LEAP_K8S_TRAINER_IMAGE) replaces the placeholder.
    name = make_platform(kube, trainer_image="reg.example/trainer@sha256:" + "1" * 64).submit_trainer_job(
        request(), job_id="x-a1", run="r")
    assert kube.job(name)["spec"]["template"]["spec"]["containers"][0]["image"].startswith("reg.example/")


def test_cancel_deletes_only_the_runs_unfinished_trainer_jobs(kube):
    platform = make_platform(kube)
    mine = [platform.submit_trainer_job(request(), job_id=f"r1-iter{i}-a1", run="k8s-household-r1") for i in (1, 2)]
    kube.finish_job(mine[0], succeeded=True, message="{}")
    other_run = platform.submit_trainer_job(request(), job_id="r2-iter1-a1", run="k8s-household-r2")
    assert platform.cancel_trainer_jobs("k8s-household-r1") == [mine[1]]
    (delete,) = kube.calls("DELETE", r"/jobs/")
    assert delete.path.endswith(mine[1]) and delete.body["propagationPolicy"] == "Background"
    assert kube.get("jobs", NS, mine[0]) is not None, "a finished Job stays (its TTL cleans it up)"
    assert kube.get("jobs", NS, other_run) is not None
    assert platform.cancel_trainer_jobs("k8s-household-r1") == []


def test_cancelling_a_training_deletes_its_job_and_a_gone_one_is_no_error(kube):
    platform = make_platform(kube)
    name = platform.submit_trainer_job(request(), job_id="r1-iter1-a1", run="k8s-household-r1")
    platform.cancel_job("r1-iter1-a1")
    assert kube.get("jobs", NS, name) is None
    platform.cancel_job("r1-iter1-a1")


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys
    from kubernetes import client
    from leap.v1 import trainer_pb2
    from orchestrator.platforms.kubernetes import KubernetesPlatform, PlatformSettings, install_termination_handler

    cfg = client.Configuration()
    cfg.host = sys.argv[1]
    platform = KubernetesPlatform(client.ApiClient(cfg), PlatformSettings(namespace="leap", watch_seconds=1,
                                                                          poll_seconds=0.05))
    assert install_termination_handler(platform, "k8s-household-r1")
    request = trainer_pb2.StartJobRequest(method=trainer_pb2.TRAINING_METHOD_SFT, base_model="smollm2",
                                          output_name="student", run_dir="/runs/k8s-household")
    print("training", flush=True)
    platform.train(request, job_id="r1-iter1-a1", run="k8s-household-r1")  # never finishes: SIGTERM comes
    print("not reached", flush=True)
""")


def test_sigterm_cancels_the_running_trainer_job_before_the_orchestrator_exits(kube, tmp_path):
    script = tmp_path / "run_orchestrator.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), kube.url], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        name = trainer_job_name("r1-iter1-a1")
        deadline = time.monotonic() + 60
        while kube.get("jobs", NS, name) is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        kube.start_job(name)
        time.sleep(0.3)  # following the Job (a watch) when the signal comes
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "not reached" not in out
    assert kube.get("jobs", NS, name) is None and not kube.items("pods", NS), "the Job and its pod are gone"
    (delete,) = kube.calls("DELETE", r"/jobs/")
    assert delete.body["propagationPolicy"] == "Background"


def test_a_new_run_records_the_base_model_as_the_desired_adapter(kube, tmp_path):
    from orchestrator.config import load_config
    from orchestrator.loop import LeapRun
    from orchestrator.progress import ProgressReporter

    kube.objects[("configmaps", NS, DESIRED_CONFIGMAP)]["data"] = {
        "desired.json": '{"checkpoint":{"uri":"/runs/old/checkpoints/student/v2","version":"student-iter-2"},'
                        '"version":"student-iter-2"}'}
    leap = LeapRun(load_config(preset="smoke"), tmp_path / "run", stubs=None, reporter=ProgressReporter(enabled=False),
                   platform=make_platform(kube))
    leap.confirm_latest_adapter()  # what run() does before the baseline evaluation
    record = parse_record(kube.get("configmaps", NS, DESIRED_CONFIGMAP)["data"]["desired.json"].encode())
    assert record.is_base, "replicas that start now must not load the previous run's adapter"


# ---------------------------------------------------------------------------------- RBAC, both ways
_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<res>[^/]+)"
                   r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")


def rbac_request(method: str, path: str, query: dict) -> tuple[str, str, str, str, str]:
    """(verb, group, resource, namespace, name) of an API request, as the RBAC authorizer sees it."""
    m = _PATH.match(path)
    assert m, path
    resource = m["res"] + (f"/{m['sub']}" if m["sub"] else "")
    name = m["name"] or ""
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
    return verb, m["group"] or "", resource, m["ns"], name


def test_the_role_grants_every_call_the_platform_makes_and_nothing_it_does_not(kube):
    from tests.deploy.fake_student import start_replica

    owner = run_job(kube)
    platform = make_platform(kube, owner_job_name="leap-run", settle_timeout_s=2.0, swap_backoff_s=0.01)
    # Every path of the platform code: a training that succeeds, one that fails (logs), a cancel,
    # the run's Job read for its uid, the replicas from EndpointSlices and from Endpoints, a hot swap
    # with its desired-adapter record.
    def controller(job: dict) -> None:  # finishes a moment later: the platform follows it with a watch
        timer = threading.Timer(0.3, kube.finish_job, args=(job["metadata"]["name"],), kwargs=dict(
            succeeded=job["metadata"]["name"].endswith("ok-a1"),
            message=json.dumps({"state": "JOB_STATE_SUCCEEDED", "checkpoint": {"version": "v1", "uri": f"{RUN_DIR}/c"}})))
        timer.daemon = True
        timer.start()

    kube.on_job_created = controller
    platform.train(request(), job_id="ok-a1", run="r")
    with pytest.raises(TrainerJobFailed):
        platform.train(request(), job_id="bad-a1", run="r")
    kube.on_job_created = None
    platform.submit_trainer_job(request(), job_id="cancel-a1", run="r")
    platform.cancel_trainer_jobs("r")
    host, _servicer = start_replica()
    try:
        kube.set_student_endpoints([("127.0.0.1", host.port, True)], namespace=NS)
        platform.hot_swap(common_pb2.CheckpointRef(name="student", version="student-iter-1", uri=f"{RUN_DIR}/c"))
        kube.endpointslices_enabled = False
        assert platform.student_endpoints()[0] == [f"127.0.0.1:{host.port}"]
    finally:
        host.stop(grace=0)
    assert owner["metadata"]["uid"] in json.dumps(kube.calls("POST", r"/jobs$")[0].body)

    role_docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "base" / "workload" / "orchestrator-rbac.yaml")
                                               .read_text()) if d]
    for d in role_docs:
        d["metadata"].setdefault("namespace", NS)  # the workload kustomization sets it
    made = {rbac_request(r.method, r.path, r.query) for r in kube.requests}
    denied = [m for m in made if not rbac_allows(role_docs, ORCHESTRATOR_SA, m[0], m[1], m[2], m[3], m[4])]
    assert not denied, f"the Role does not grant: {denied}"
    (role,) = [d for d in role_docs if d["kind"] == "Role"]
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    used = [m for m in made if m[:3] == (verb, group, resource)
                            and (not rule.get("resourceNames") or m[4] in rule["resourceNames"])]
                    assert used, f"the Role grants {verb} {group or 'core'}/{resource}, which nothing calls"
    assert all(m[3] == NS for m in made), "every call stays in the run's namespace"
    assert dns_label("r") == kube.job(trainer_job_name("ok-a1"))["metadata"]["labels"][RUN_LABEL]
