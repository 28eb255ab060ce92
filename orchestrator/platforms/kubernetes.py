"""`leap run --platform kubernetes`: trainer Jobs and adapter hot swap on every student replica.

Training: each training is a Kubernetes Job built from the `leap-trainer` PodTemplate that the
deploy overlay installed (image, resources, GPU, volumes: the cluster's choice), plus what this run
decides: the training request (datasets and run directory on the shared runs volume, mounted at
/runs in every pod), labels, backoffLimit, ttlSecondsAfterFinished and a pod failure policy. The Job
runs `python -m orchestrator.platforms.trainer_job`, which leaves the finished trainer job (with its
checkpoint reference) in the pod's termination message; a failure is reported with the Job's
reason, the pod's exit code and termination message, and the last lines of its log.

Ownership: every trainer Job is owned by the run's own Job (`leap-run`, named to this process by
the downward API: LEAP_K8S_OWNER_JOB_NAME / LEAP_K8S_OWNER_JOB_UID), so deleting the run deletes its
trainer Jobs and their pods (the garbage collector follows ownerReferences). On SIGTERM the
orchestrator deletes the unfinished trainer Jobs of its run itself before it exits.

Declarative adapters: the fleet's desired adapter is recorded in the `leap-student-desired-adapter`
ConfigMap, which every student pod mounts (services.student.desired_adapter): a replica that starts
or restarts loads it before it reports SERVING. The swap itself still loads the adapter on every
ready replica directly (orchestrator.platforms.hot_swap) and confirms it with ListAdapters before the
run goes on, so it never waits for the kubelet to refresh the mounted file. The student replicas are
the endpoints of the headless `leap-student` Service (EndpointSlices; Endpoints on clusters without
them); the run's own student channel checks their health, so calls go only to SERVING replicas.

Needs the `kubernetes` package (extra `orchestrator`), imported only here. In a pod the
ServiceAccount is used (deploy/base/workload/orchestrator-rbac.yaml); elsewhere the kubeconfig.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from leap.v1 import common_pb2, student_pb2, trainer_pb2
from orchestrator.platforms.base import BASE_VERSION, Platform, StatusCallback, TrainingFailed, TrainingObserver
from orchestrator.platforms.hot_swap import HotSwapError, ReplicaResult, SwapReport, swap_adapter_on_replicas
from services.student.desired_adapter import RECORD_KEY, encode_record

log = logging.getLogger("leap.orchestrator.kubernetes")

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
RUN_LABEL = "leap-serve/run"
JOB_ID_LABEL = "leap-serve/train-job"
JOB_ID_ANNOTATION = "leap-serve/job-id"
MANAGED_BY = "leap-orchestrator"
GPU_RESOURCE = "nvidia.com/gpu"
DESIRED_CONFIGMAP = "leap-student-desired-adapter"
STUDENT_HEALTH_SERVICE = "leap.v1.StudentService"
# The registry of the checked-in overlays: reserved (RFC 2606), so an image nobody set never resolves.
PLACEHOLDER_REGISTRY = "registry.invalid"
# trainer_job's exit code for a request that can never succeed (retrying the pod cannot help).
EXIT_BAD_REQUEST = 2
# Waiting reasons that do not clear up by themselves (after `stuck_after_s`).
STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError"}


class TrainerJobFailed(TrainingFailed):
    """A trainer Job failed (or cannot start). The message says why, with the pod's last log lines."""

    def __init__(self, message: str, *, job_name: str = "", exit_code: int | None = None, reason: str = "",
                 logs: str = ""):
        super().__init__(message)
        self.job_name = job_name
        self.exit_code = exit_code
        self.reason = reason
        self.logs = logs


class KubernetesError(RuntimeError):
    """A Kubernetes API call failed; the message says what to check."""


# ------------------------------------------------------------------------------------- config
def load_kube_config(*, kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient: the pod's ServiceAccount in a cluster, else the kubeconfig ($KUBECONFIG, ~/.kube)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        except config.ConfigException as exc:
            raise KubernetesError(f"no Kubernetes access: not in a pod and no usable kubeconfig ({exc}); "
                                  "set KUBECONFIG or run the orchestrator as the leap-run Job") from exc
    return client.ApiClient(configuration)


def current_namespace(*, kubeconfig: str | None = None, context: str | None = None) -> str:
    """$LEAP_NAMESPACE, else the pod's own namespace, else the kubeconfig context's, else "default"."""
    if os.environ.get("LEAP_NAMESPACE"):
        return os.environ["LEAP_NAMESPACE"]
    sa = Path(SA_NAMESPACE_FILE)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and sa.exists():
        return sa.read_text().strip()
    try:
        from kubernetes import config

        _contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            active = next((c for c in _contexts if c.get("name") == context), active)
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return namespace
    except Exception:  # noqa: BLE001 - no kubeconfig: fall through to the default
        pass
    return "default"


@dataclass
class PlatformSettings:
    """What the orchestrator decides about trainer Jobs and student discovery (the overlay decides the rest)."""

    namespace: str = "default"
    trainer_template: str = "leap-trainer"
    trainer_container: str = "trainer"
    # Where the runs volume is mounted in every pod; run directories and datasets must be under it.
    runs_dir: str = "/runs"
    # Override the template's image (None: as the overlay set it).
    trainer_image: str | None = None
    # GPUs per trainer Job: None keeps the template's; 0 removes any; N requests N.
    gpus: int | None = None
    backoff_limit: int = 1
    ttl_seconds_after_finished: int = 86400
    active_deadline_seconds: int | None = 24 * 3600
    student_service: str = "leap-student"
    student_port: str = "grpc"
    # Seconds per watch request, between status polls, and before a stuck pod counts as failed.
    watch_seconds: int = 60
    poll_seconds: float = 5.0
    stuck_after_s: float = 180.0
    # Hot swap: how long to wait for not-ready student replicas, attempts per replica.
    settle_timeout_s: float = 600.0
    swap_attempts: int = 3
    swap_backoff_s: float = 1.0
    # The ConfigMap that records the student fleet's desired adapter ("" records nothing).
    desired_configmap: str = DESIRED_CONFIGMAP
    # The run's own Job, owner of every trainer Job (both empty: no owner, e.g. run from a laptop).
    owner_job_name: str = ""
    owner_job_uid: str = ""

    @classmethod
    def from_env(cls, namespace: str) -> "PlatformSettings":
        """Defaults, overridable by LEAP_K8S_* variables (set them on the orchestrator Job)."""
        s = cls(namespace=namespace)
        env = os.environ
        s.trainer_template = env.get("LEAP_K8S_TRAINER_TEMPLATE", s.trainer_template)
        s.trainer_image = env.get("LEAP_K8S_TRAINER_IMAGE") or None
        if env.get("LEAP_K8S_GPUS", "") != "":
            s.gpus = int(env["LEAP_K8S_GPUS"])
        s.runs_dir = env.get("LEAP_K8S_RUNS_DIR", s.runs_dir)
        s.student_service = env.get("LEAP_K8S_STUDENT_SERVICE", s.student_service)
        s.student_port = env.get("LEAP_K8S_STUDENT_PORT", s.student_port)
        s.desired_configmap = env.get("LEAP_K8S_DESIRED_CONFIGMAP", s.desired_configmap)
        s.owner_job_name = env.get("LEAP_K8S_OWNER_JOB_NAME", "")
        s.owner_job_uid = env.get("LEAP_K8S_OWNER_JOB_UID", "")
        return s


# ------------------------------------------------------------------------------------- names
def dns_label(text: str, max_len: int = 63) -> str:
    """A valid DNS-1123 label (and label value) from any text; long ones keep a hash suffix."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if len(label) > max_len:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        label = label[: max_len - 9].rstrip("-") + "-" + digest
    return label


def trainer_job_name(job_id: str) -> str:
    return dns_label(f"leap-train-{job_id}")


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _check_paths(request: trainer_pb2.StartJobRequest, runs_dir: str) -> None:
    paths = [("run_dir", request.run_dir)] + [(f"dataset {d.uri}", d.uri) for d in request.datasets]
    for what, path in paths:
        if not path or "://" in path:
            continue  # object-store URIs are reachable from anywhere
        if not _under(path, runs_dir):
            raise ValueError(f"the training {what} {path!r} is not on the runs volume ({runs_dir}): the "
                             f"trainer pod would not see it; run the orchestrator with --run-dir under {runs_dir}")


def _set_gpus(container: dict, gpus: int | None) -> None:
    if gpus is None:
        return
    resources = container.setdefault("resources", {})
    for kind in ("requests", "limits"):
        values = dict(resources.get(kind) or {})
        values.pop(GPU_RESOURCE, None)
        if gpus > 0:
            values[GPU_RESOURCE] = str(gpus)
        if values:
            resources[kind] = values
        else:
            resources.pop(kind, None)


def request_to_json(request: trainer_pb2.StartJobRequest) -> str:
    return json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True),
                      separators=(",", ":"), sort_keys=True)


def owner_reference(name: str, uid: str) -> dict:
    """An ownerReference to the run's Job: the garbage collector deletes the trainer Job with it.

    Not a controller reference (the Job controller manages pods, and a batch queue such as Kueue
    would take a controller-owned Job for a child of a queued one), and without
    blockOwnerDeletion, which would need update rights on jobs/finalizers."""
    return {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid}


def build_trainer_job(pod_template: dict, request: trainer_pb2.StartJobRequest, *, job_id: str, run: str,
                      settings: PlatformSettings, owner: dict | None = None) -> dict:
    """The Job manifest (a plain dict, camelCase as the API wants it) for one training.

    `pod_template` is the PodTemplate object (or just its `template`), e.g. the overlay's
    leap-trainer as read from the API. `owner`: an ownerReference (see owner_reference).
    """
    if not job_id:
        raise ValueError("a trainer Job needs a job id")
    _check_paths(request, settings.runs_dir)
    request = _with_job_id(request, job_id)
    template = copy.deepcopy(pod_template.get("template", pod_template))
    spec = template.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError(f"PodTemplate {settings.trainer_template} has no containers")
    container = next((c for c in containers if c.get("name") == settings.trainer_container), containers[0])
    if settings.trainer_image:
        container["image"] = settings.trainer_image
    container["args"] = ["--request-json", request_to_json(request), "--runs-dir", settings.runs_dir]
    container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    _set_gpus(container, settings.gpus)
    spec["restartPolicy"] = "Never"

    run_labels = {RUN_LABEL: dns_label(run), JOB_ID_LABEL: dns_label(job_id),
                  "app.kubernetes.io/managed-by": MANAGED_BY}
    pod_meta = template.setdefault("metadata", {})
    for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp"):
        pod_meta.pop(key, None)
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **run_labels}
    job_labels = {**(pod_template.get("metadata", {}).get("labels") or {}), **pod_meta["labels"]}

    job_spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        # A bad request fails the Job at once; a pod evicted or preempted does not count as a failure.
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": container["name"], "operator": "In",
                                                  "values": [EXIT_BAD_REQUEST]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": template,
    }
    if settings.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    metadata: dict[str, Any] = {
        "name": trainer_job_name(job_id),
        "namespace": settings.namespace,
        "labels": job_labels,
        "annotations": {JOB_ID_ANNOTATION: job_id, "leap-serve/run-dir": request.run_dir},
    }
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def placeholder_images(pod_template: dict) -> list[str]:
    """Images of a pod template that still point at the placeholder registry."""
    spec = pod_template.get("template", pod_template).get("spec") or {}
    return [c.get("image", "") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
            if c.get("image", "").split("/", 1)[0] == PLACEHOLDER_REGISTRY]


def _with_job_id(request: trainer_pb2.StartJobRequest, job_id: str) -> trainer_pb2.StartJobRequest:
    out = trainer_pb2.StartJobRequest()
    out.CopyFrom(request)
    out.job_id = job_id
    return out


# ------------------------------------------------------------------------------------- status helpers
def _condition(obj: dict, kind: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_phase(job: dict) -> str:
    """"succeeded", "failed" or "running" from the Job's conditions."""
    if _condition(job, "Complete"):
        return "succeeded"
    if _condition(job, "Failed"):
        return "failed"
    return "running"


def _container_status(pod: dict, name: str) -> dict | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == name), statuses[0] if statuses else None)


def parse_result(message: str) -> trainer_pb2.Job | None:
    """The trainer job that trainer_job left in its termination message (None if there is none)."""
    text = (message or "").strip()
    if not text.startswith("{"):
        return None
    try:
        return json_format.ParseDict(json.loads(text), trainer_pb2.Job(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError):
        return None


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _pick_port(ports: list[dict], wanted: str) -> int | None:
    for p in ports:
        if p.get("name") == wanted or str(p.get("port")) == str(wanted):
            return p.get("port")
    return ports[0].get("port") if len(ports) == 1 else None


# ------------------------------------------------------------------------------------- the platform
class KubernetesPlatform(Platform):
    """Trainer Jobs and student replicas of one namespace, through the Kubernetes API.

    As a run's platform: every training is a trainer Job labelled with the run; every adapter the run
    loads is recorded as the student fleet's desired adapter and hot-swapped on every replica.
    """

    description = "Kubernetes"

    def __init__(self, api_client, settings: PlatformSettings):
        from kubernetes import client

        self.api_client = api_client
        self.settings = settings
        self.namespace = settings.namespace
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.discovery = client.DiscoveryV1Api(api_client)
        self._owner: dict | None = None

    @classmethod
    def from_environment(cls, *, kubeconfig: str | None = None, context: str | None = None) -> "KubernetesPlatform":
        api = load_kube_config(kubeconfig=kubeconfig, context=context)
        return cls(api, PlatformSettings.from_env(current_namespace(kubeconfig=kubeconfig, context=context)))

    # -------------------------------------------------------------- API plumbing
    def _call(self, what: str, fn, *args, **kwargs) -> dict:
        """Call an API function and return the response as a plain dict (the API's JSON)."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = fn(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise self._api_error(what, exc) from exc
        return json.loads(resp.data or b"{}")

    def _api_error(self, what: str, exc) -> KubernetesError:
        hint = ""
        if exc.status == 403:
            hint = (f" (forbidden: the orchestrator's ServiceAccount lacks a permission in namespace "
                    f"{self.namespace}; apply deploy/base/workload/orchestrator-rbac.yaml through an overlay)")
        elif exc.status == 401:
            hint = " (unauthorized: the credentials were refused)"
        body = ""
        try:
            body = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            body = str(exc.body or "")[:300]
        err = KubernetesError(f"could not {what}: HTTP {exc.status} {exc.reason}: {body}{hint}")
        err.status = exc.status  # type: ignore[attr-defined]
        return err

    # -------------------------------------------------------------- trainer Jobs
    def trainer_template(self) -> dict:
        name = self.settings.trainer_template
        try:
            return self._call(f"read PodTemplate {name}", self.core.read_namespaced_pod_template, name, self.namespace)
        except KubernetesError as exc:
            if getattr(exc, "status", None) == 404:
                raise KubernetesError(f"PodTemplate {name} not found in namespace {self.namespace}: apply an "
                                      "overlay first (kubectl apply -k deploy/overlays/dev-cpu or .../gpu)") from exc
            raise

    def owner(self) -> dict | None:
        """The ownerReference of the run's Job (None when this process runs outside such a Job)."""
        if self._owner is not None or not self.settings.owner_job_name:
            return self._owner
        name, uid = self.settings.owner_job_name, self.settings.owner_job_uid
        if not uid:  # only the name was given: the API knows the uid
            job = self._call(f"read the run's Job {name}", self.batch.read_namespaced_job, name, self.namespace)
            uid = job.get("metadata", {}).get("uid", "")
            if not uid:
                raise KubernetesError(f"the run's Job {name} has no uid")
        self._owner = owner_reference(name, uid)
        return self._owner

    def submit_trainer_job(self, request: trainer_pb2.StartJobRequest, *, job_id: str, run: str) -> str:
        """Create the trainer Job for `job_id`, or adopt it when it already exists (a resumed run)."""
        template = self.trainer_template()
        placeholders = placeholder_images(template) if not self.settings.trainer_image else []
        if placeholders:
            raise KubernetesError(
                f"PodTemplate {self.settings.trainer_template} still names the placeholder image {placeholders[0]}: "
                "set your registry and digest in your overlay (images: newName/digest, see docs/deploy.md)")
        body = build_trainer_job(template, request, job_id=job_id, run=run, settings=self.settings,
                                 owner=self.owner())
        name = body["metadata"]["name"]
        try:
            self._call(f"create trainer Job {name}", self.batch.create_namespaced_job, self.namespace, body)
            log.info("trainer job created", extra={"job": name, "namespace": self.namespace})
        except KubernetesError as exc:
            if getattr(exc, "status", None) != 409:
                raise
            log.info("trainer job exists already; following it", extra={"job": name})
        return name

    def delete_trainer_job(self, name: str) -> bool:
        """Delete a trainer Job and (in the background) its pods; False when it was gone already."""
        from kubernetes import client

        try:
            self._call(f"delete trainer Job {name}", self.batch.delete_namespaced_job, name, self.namespace,
                       body=client.V1DeleteOptions(propagation_policy="Background"))
        except KubernetesError as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise
        log.info("trainer job deleted", extra={"job": name})
        return True

    def cancel_trainer_jobs(self, run: str) -> list[str]:
        """Delete every unfinished trainer Job of `run` (this orchestrator's); returns their names."""
        selector = f"{RUN_LABEL}={dns_label(run)},app.kubernetes.io/managed-by={MANAGED_BY}"
        jobs = self._call(f"list the trainer Jobs of run {run}", self.batch.list_namespaced_job, self.namespace,
                          label_selector=selector).get("items") or []
        cancelled = []
        for job in jobs:
            name = job.get("metadata", {}).get("name", "")
            if name and job_phase(job) == "running" and self.delete_trainer_job(name):
                cancelled.append(name)
        return cancelled

    # -------------------------------------------------------------- the desired adapter
    def read_desired_adapter(self) -> str | None:
        """The recorded desired-adapter text (None: nothing recorded, or no ConfigMap configured)."""
        name = self.settings.desired_configmap
        if not name:
            return None
        try:
            cm = self._call(f"read ConfigMap {name}", self.core.read_namespaced_config_map, name, self.namespace)
        except KubernetesError as exc:
            if getattr(exc, "status", None) == 404:
                raise KubernetesError(f"ConfigMap {name} not found in namespace {self.namespace}: apply the platform "
                                      "overlay (it creates the ConfigMap the student pods mount)") from exc
            raise
        return (cm.get("data") or {}).get(RECORD_KEY)

    def record_desired_adapter(self, version: str, checkpoint: dict | None = None, *, run: str = "",
                               text: str | None = None) -> None:
        """Record the version every student replica must serve (in the ConfigMap the students mount)."""
        name = self.settings.desired_configmap
        if not name:
            return
        if text is None:
            text = encode_record(version, checkpoint, run=run) if run else encode_record(version, checkpoint)
        try:
            self._call(f"record the desired adapter in ConfigMap {name}", self.core.patch_namespaced_config_map,
                       name, self.namespace, {"data": {RECORD_KEY: text}},
                       _content_type="application/merge-patch+json")
        except KubernetesError as exc:
            if getattr(exc, "status", None) == 404:
                raise KubernetesError(f"ConfigMap {name} not found in namespace {self.namespace}: apply the platform "
                                      "overlay (it creates the ConfigMap the student pods mount)") from exc
            raise
        log.info("desired adapter recorded", extra={"version": version, "configmap": name})

    def job_pods(self, name: str) -> list[dict]:
        """The Job's pods, oldest first."""
        pods = self._call(f"list the pods of Job {name}", self.core.list_namespaced_pod, self.namespace,
                          label_selector=f"batch.kubernetes.io/job-name={name}").get("items") or []
        if not pods:  # clusters older than 1.27 set only the legacy label
            pods = self._call(f"list the pods of Job {name}", self.core.list_namespaced_pod, self.namespace,
                              label_selector=f"job-name={name}").get("items") or []
        return sorted(pods, key=lambda p: (p.get("metadata", {}).get("creationTimestamp") or "",
                                           p.get("metadata", {}).get("name", "")))

    def _pod_log_tail(self, pod: str, lines: int = 20) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.core.read_namespaced_pod_log(pod, self.namespace, container=self.settings.trainer_container,
                                                     tail_lines=lines, _preload_content=False)
            return resp.data.decode("utf-8", errors="replace").rstrip()
        except ApiException as exc:
            return f"(log unavailable: HTTP {exc.status} {exc.reason})"

    def wait_for_job(self, name: str, *, timeout_s: float | None = None,
                     on_status: StatusCallback | None = None) -> trainer_pb2.Job:
        """Follow the Job until it finishes: its trainer job on success, TrainerJobFailed otherwise."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stuck_since: dict[str, float] = {}
        last_status = ""
        while True:
            try:
                job = self._call(f"read trainer Job {name}", self.batch.read_namespaced_job, name, self.namespace)
            except KubernetesError as exc:
                if getattr(exc, "status", None) == 404:
                    raise TrainerJobFailed(f"trainer Job {name} disappeared (deleted while it ran?)",
                                           job_name=name, reason="Deleted") from exc
                raise
            phase = job_phase(job)
            if phase == "succeeded":
                return self._result_of(name, job)
            if phase == "failed":
                raise self._failure_of(name, job)
            status = self._progress_text(name, job, stuck_since)
            if on_status is not None and status != last_status:
                on_status(status)
            last_status = status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"trainer Job {name} still running after {timeout_s:.0f}s ({status})")
            self._wait_for_change(name, job.get("metadata", {}).get("resourceVersion"), deadline)

    def _wait_for_change(self, name: str, resource_version: str | None, deadline: float | None) -> None:
        """Block on a watch of the Job until it changes or the watch window ends."""
        from kubernetes import watch

        window = self.settings.watch_seconds
        if deadline is not None:
            window = max(1, min(window, int(deadline - time.monotonic()) + 1))
        w = watch.Watch()
        try:
            kwargs = {"field_selector": f"metadata.name={name}", "timeout_seconds": window, "deserialize": False}
            if resource_version:
                kwargs["resource_version"] = resource_version
            for event in w.stream(self.batch.list_namespaced_job, self.namespace, **kwargs):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    break  # e.g. 410 Gone: re-read and watch again
                if event.get("type") == "DELETED" or job_phase(obj) != "running":
                    break
                # Pod-level news (a pull error) does not touch the Job: look again every poll.
                if self.settings.poll_seconds and event.get("type") == "MODIFIED":
                    break
        except Exception as exc:  # noqa: BLE001 - a broken watch is not a failed Job: poll instead
            log.debug("watch interrupted: %s", exc)
            time.sleep(self.settings.poll_seconds)
        finally:
            w.stop()

    def _progress_text(self, name: str, job: dict, stuck_since: dict[str, float]) -> str:
        """A one-line status; raises TrainerJobFailed when a pod is stuck for good (image, config)."""
        status = job.get("status") or {}
        parts = [f"Job {name}: {status.get('active', 0)} active, {status.get('failed', 0)} failed"]
        for pod in self.job_pods(name):
            pod_name = pod.get("metadata", {}).get("name", "?")
            pstatus = pod.get("status") or {}
            cs = _container_status(pod, self.settings.trainer_container) or {}
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if reason in STUCK_REASONS:
                first = stuck_since.setdefault(pod_name, time.monotonic())
                if time.monotonic() - first >= self.settings.stuck_after_s:
                    raise TrainerJobFailed(
                        f"trainer Job {name} cannot start: pod {pod_name} is stuck in {reason}: "
                        f"{waiting.get('message', '')} (check the image name and registry access, and that "
                        "the Secrets and ConfigMaps it needs exist)", job_name=name, reason=reason)
                parts.append(f"pod {pod_name} {reason}")
                continue
            for cond in pstatus.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    parts.append(f"pod {pod_name} waiting for a node: {cond.get('message', cond.get('reason', ''))}")
                    break
            else:
                parts.append(f"pod {pod_name} {pstatus.get('phase', 'Pending')}")
        return "; ".join(parts)

    def _result_of(self, name: str, job: dict) -> trainer_pb2.Job:
        for pod in reversed(self.job_pods(name)):
            if (pod.get("status") or {}).get("phase") != "Succeeded":
                continue
            cs = _container_status(pod, self.settings.trainer_container) or {}
            message = ((cs.get("state") or {}).get("terminated") or {}).get("message", "")
            result = parse_result(message)
            if result is not None:
                return result
        # Fall back to the result file on the shared volume (when this process mounts it too).
        job_id = (job.get("metadata", {}).get("annotations") or {}).get(JOB_ID_ANNOTATION, "")
        run_dir = (job.get("metadata", {}).get("annotations") or {}).get("leap-serve/run-dir", "")
        if job_id and run_dir:
            path = Path(run_dir) / "k8s" / f"trainer-{job_id}.json"
            if path.exists():
                result = parse_result(path.read_text())
                if result is not None:
                    return result
        raise TrainerJobFailed(f"trainer Job {name} succeeded but left no result (no termination message and no "
                               "result file): is the image's command orchestrator.platforms.trainer_job?",
                               job_name=name)

    def _failure_of(self, name: str, job: dict) -> TrainerJobFailed:
        cond = _condition(job, "Failed") or {}
        text = f"trainer Job {name} failed ({cond.get('reason', 'Failed')}: {cond.get('message', '')})"
        exit_code, reason, logs = None, cond.get("reason", ""), ""
        failed = [p for p in self.job_pods(name) if (p.get("status") or {}).get("phase") == "Failed"]
        if failed:
            pod = failed[-1]
            pod_name = pod.get("metadata", {}).get("name", "?")
            cs = _container_status(pod, self.settings.trainer_container) or {}
            term = (cs.get("state") or {}).get("terminated") or {}
            exit_code = term.get("exitCode")
            reason = term.get("reason") or reason
            text += f"; pod {pod_name}: container exited {exit_code} ({reason or 'Error'})"
            result = parse_result(term.get("message", ""))
            if result is not None and result.error:
                text += f": {result.error}"
            elif term.get("message"):
                text += ": " + term["message"].strip().splitlines()[-1][:500]
            logs = self._pod_log_tail(pod_name)
            if logs:
                text += "\nlast log lines of " + pod_name + ":\n" + "\n".join("  " + ln for ln in logs.splitlines())
        return TrainerJobFailed(text, job_name=name, exit_code=exit_code, reason=reason, logs=logs)

    def train(self, request: trainer_pb2.StartJobRequest, *, job_id: str, run: str,
              on_status: StatusCallback | None = None, timeout_s: float | None = None) -> trainer_pb2.Job:
        """Run one training as a Job and return the finished trainer job (checkpoint included)."""
        name = self.submit_trainer_job(request, job_id=job_id, run=run)
        return self.wait_for_job(name, timeout_s=timeout_s, on_status=on_status)

    # -------------------------------------------------------------- the run's platform
    def train_job(self, request: trainer_pb2.StartJobRequest, observer: TrainingObserver) -> trainer_pb2.Job:
        name = self.submit_trainer_job(request, job_id=request.job_id, run=self.run_label)
        observer.submitted(request.job_id)
        return self.wait_for_job(name, on_status=observer.status)

    def cancel_job(self, job_id: str) -> None:
        self.delete_trainer_job(trainer_job_name(job_id))

    def load_adapter(self, checkpoint: common_pb2.CheckpointRef, on_status: StatusCallback) -> student_pb2.AdapterInfo:
        report = self.hot_swap(checkpoint, on_status=on_status, run=self.run_label)
        on_status(report.summary())
        return student_pb2.AdapterInfo(version=checkpoint.version, checkpoint=checkpoint, current=True,
                                       load_seconds=max((r.load_seconds for r in report.replicas), default=0.0))

    def confirm_adapter(self, checkpoint: common_pb2.CheckpointRef | None, on_status: StatusCallback) -> None:
        if checkpoint is None:
            # Replicas that start now serve the base model, not a previous run's adapter.
            self.record_desired_adapter(BASE_VERSION, run=self.run_label)
        else:
            # A replica that serves it already is only asked (ListAdapters); the others load it.
            self.hot_swap(checkpoint, on_status=on_status, run=self.run_label)

    # -------------------------------------------------------------- student replicas
    def student_endpoints(self) -> tuple[list[str], list[str]]:
        """(ready, not ready) replica addresses of the student Service, as host:port."""
        svc, wanted = self.settings.student_service, self.settings.student_port
        try:
            slices = self._call(f"list the EndpointSlices of Service {svc}",
                                self.discovery.list_namespaced_endpoint_slice, self.namespace,
                                label_selector=f"kubernetes.io/service-name={svc}").get("items") or []
        except KubernetesError as exc:
            if getattr(exc, "status", None) not in (403, 404):
                raise
            return self._endpoints_fallback(svc, wanted)
        families = {s.get("addressType") for s in slices}
        family = "IPv4" if "IPv4" in families else "IPv6"  # dual stack: every pod once
        ready: set[str] = set()
        pending: set[str] = set()
        for s in slices:
            if s.get("addressType") != family:
                continue
            port = _pick_port(s.get("ports") or [], wanted)
            if port is None:
                continue
            for ep in s.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                if cond.get("terminating"):
                    continue
                target = pending if cond.get("ready") is False else ready
                for address in ep.get("addresses") or []:
                    target.add(_host_port(address, port))
        return sorted(ready), sorted(pending - ready)

    def _endpoints_fallback(self, svc: str, wanted: str) -> tuple[list[str], list[str]]:
        ep = self._call(f"read the Endpoints of Service {svc}", self.core.read_namespaced_endpoints, svc,
                        self.namespace)
        ready: set[str] = set()
        pending: set[str] = set()
        for subset in ep.get("subsets") or []:
            port = _pick_port(subset.get("ports") or [], wanted)
            if port is None:
                continue
            for a in subset.get("addresses") or []:
                ready.add(_host_port(a["ip"], port))
            for a in subset.get("notReadyAddresses") or []:
                pending.add(_host_port(a["ip"], port))
        return sorted(ready), sorted(pending)

    def hot_swap(self, checkpoint: common_pb2.CheckpointRef, *, make_current: bool = True,
                 on_status: StatusCallback | None = None, run: str = "") -> SwapReport:
        """Record `checkpoint` as the desired adapter, load it on every student replica and confirm it
        there; HotSwapError otherwise (and the previous record is put back).

        Recorded first, so that a replica that starts meanwhile comes up with the new version.
        Replicas still starting are waited for (settle_timeout_s), so that the whole fleet serves
        the new version when this returns.
        """
        previous = None
        if make_current and self.settings.desired_configmap:
            previous = self.read_desired_adapter()
            ckpt = json_format.MessageToDict(checkpoint, preserving_proto_field_name=True)
            self.record_desired_adapter(checkpoint.version, ckpt, run=run)
        try:
            return self._swap_on_replicas(checkpoint, make_current=make_current, on_status=on_status)
        except HotSwapError:
            if make_current and self.settings.desired_configmap:
                # The replicas that refused keep serving the previous version: so must new ones.
                self.record_desired_adapter("", text=previous if previous is not None else encode_record("base"))
            raise

    def _swap_on_replicas(self, checkpoint: common_pb2.CheckpointRef, *, make_current: bool,
                          on_status: StatusCallback | None) -> SwapReport:
        deadline = time.monotonic() + self.settings.settle_timeout_s
        while True:
            ready, pending = self.student_endpoints()
            if not pending or time.monotonic() >= deadline:
                break
            if on_status is not None:
                on_status(f"waiting for {len(pending)} student replica(s) to become ready")
            time.sleep(self.settings.poll_seconds)
        report = swap_adapter_on_replicas(ready, checkpoint, make_current=make_current,
                                          attempts=self.settings.swap_attempts,
                                          backoff_s=self.settings.swap_backoff_s, require_all=False)
        for address in pending:
            report.replicas.append(ReplicaResult(address, False, 0, error=(
                f"not ready after {self.settings.settle_timeout_s:.0f}s (still loading, or failing its probes)")))
        if not report.ok:
            raise HotSwapError(report)
        log.info("hot swap confirmed", extra={"version": checkpoint.version, "replicas": len(report.replicas)})
        return report


# ------------------------------------------------------------------------------------- the run's process
def install_termination_handler(platform: KubernetesPlatform, run: str) -> bool:
    """On SIGTERM, delete the run's unfinished trainer Jobs, then exit (status 143).

    A pod being stopped (the run's Job deleted, a node drained) gets SIGTERM before SIGKILL: the GPU
    a trainer Job holds is freed now, not when its deadline passes. A retried orchestrator pod
    resumes the run and starts that training again. Only the main thread can install it; False
    otherwise (nothing installed).
    """
    if threading.current_thread() is not threading.main_thread():
        return False

    def on_sigterm(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one cleanup, however many signals follow
        try:
            cancelled = platform.cancel_trainer_jobs(run)
            log.warning("SIGTERM: trainer jobs cancelled", extra={"jobs": ",".join(cancelled) or "none"})
        except Exception:  # noqa: BLE001 - exit anyway; the owner reference still ties them to the run
            log.exception("SIGTERM: could not cancel the trainer jobs")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def use_health_checked_student_channel(leap) -> None:
    """Give the run a student channel that sends calls only to replicas reporting SERVING.

    A replica that restarts keeps its pod IP, so a client may reconnect to it before the
    endpoints change; while it loads its model and desired adapter it reports NOT_SERVING, and
    client-side health checking keeps calls (and an episode's retries) on the other replicas.
    """
    stubs = getattr(leap, "stubs", None)
    address = (getattr(stubs, "addresses", None) or {}).get("student")
    if not address:
        return
    from leap.v1 import student_pb2_grpc
    from services.runtime.channels import make_channel

    channel = make_channel(address, health_check_service=STUDENT_HEALTH_SERVICE, side_effect_free=True)
    channels = getattr(stubs, "_channels", None)
    if isinstance(channels, dict):
        old = channels.get("student")
        channels["student"] = channel  # closed with the others by stubs.close()
        if old is not None:
            old.close()
    stubs.student = student_pb2_grpc.StudentServiceStub(channel)
