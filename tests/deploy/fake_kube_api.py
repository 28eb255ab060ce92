"""A tiny stand-in for the Kubernetes API server, on loopback, for testing the orchestrator's cluster code.

No API server can run in CI (no container runtime, no etcd), so this speaks the small part of the
API that orchestrator.platforms.kubernetes uses, with the real JSON shapes and the real `kubernetes`
Python client on the other side (configured with host http://127.0.0.1:PORT):

    GET  /api/v1/namespaces/{ns}/podtemplates/{name}
    POST /apis/batch/v1/namespaces/{ns}/jobs                 (409 AlreadyExists when present)
    GET  /apis/batch/v1/namespaces/{ns}/jobs[/{name}[/status]]  (list supports ?watch=true)
    GET  /api/v1/namespaces/{ns}/pods?labelSelector=...
    GET  /api/v1/namespaces/{ns}/pods/{name}/log?tailLines=N
    GET  /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=...
    GET  /api/v1/namespaces/{ns}/endpoints/{name}
    GET/PATCH /api/v1/namespaces/{ns}/configmaps/{name}       (merge patch of `data`)
    DELETE /apis/batch/v1/namespaces/{ns}/jobs/{name}         (DeleteOptions.propagationPolicy)

Nothing runs the Jobs: a test plays the Job controller and the kubelet with `start_job`,
`finish_job` and `stick_pod` (directly, or from `on_job_created`). The garbage collector is played
here, as the real one behaves: an object whose ownerReferences all name owners that no longer exist
(same namespace, kind, name and uid) is deleted, and so are its own dependents; it runs after every
create and delete. A create is refused (422) when an ownerReference lacks apiVersion, kind, name or
uid, as the API server does. Every request is recorded.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlparse


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    body: dict | None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _matches(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


class FakeKube:
    """The API's state plus helpers that play the controllers."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.rv = 1000
        self.objects: dict[tuple[str, str, str], dict] = {}
        # Deleted objects as (resourceVersion, kind, namespace, object): the watch reports them.
        self.tombstones: list[tuple[int, str, str, dict]] = []
        self.logs: dict[tuple[str, str], str] = {}
        self.requests: list[Recorded] = []
        self.on_job_created: Callable[[dict], None] | None = None
        self.endpointslices_enabled = True
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeKube":
        fake = self

        class Handler(_Handler):
            kube = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="fake-kube-api")
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            with self.cond:
                self.cond.notify_all()
            self._server.shutdown()
            self._server.server_close()

    def api_client(self):
        """A `kubernetes` ApiClient pointed at this server."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    # ------------------------------------------------------------------ store
    def put(self, kind: str, obj: dict) -> dict:
        with self.cond:
            self.rv += 1
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = str(self.rv)
            self.objects[(kind, meta.get("namespace", "default"), meta["name"])] = obj
            self.cond.notify_all()
            return obj

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> dict | None:
        """Delete an object; its dependents go too (Background/Foreground) or lose the reference (Orphan)."""
        with self.cond:
            obj = self.objects.pop((kind, namespace, name), None)
            if obj is None:
                return None
            self.rv += 1
            self.tombstones.append((self.rv, kind, namespace, obj))
            uid = obj["metadata"]["uid"]
            if propagation == "Orphan":
                for dep in self.objects.values():
                    refs = dep["metadata"].get("ownerReferences") or []
                    if any(r.get("uid") == uid for r in refs):
                        dep["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
            self.collect_garbage()
            self.cond.notify_all()
            return obj

    def collect_garbage(self) -> list[tuple[str, str, str]]:
        """Delete every object all of whose owners are gone (recursively); returns what was deleted."""
        deleted = []
        with self.cond:
            while True:
                live = {(KIND_OF.get(o.get("kind", ""), ""), ns, o["metadata"]["name"], o["metadata"]["uid"])
                        for (_k, ns, _n), o in self.objects.items()}
                dangling = [key for key, o in self.objects.items()
                            if (o["metadata"].get("ownerReferences") or [])
                            and not any((KIND_OF.get(r.get("kind", ""), "?"), key[1], r.get("name"), r.get("uid"))
                                        in live for r in o["metadata"]["ownerReferences"])]
                if not dangling:
                    return deleted
                for key in dangling:
                    obj = self.objects.pop(key)
                    self.rv += 1
                    self.tombstones.append((self.rv, key[0], key[1], obj))
                    deleted.append(key)
                self.cond.notify_all()

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        with self.cond:
            return self.objects.get((kind, namespace, name))

    def items(self, kind: str, namespace: str, label_selector: str | None = None,
              field_selector: str | None = None) -> list[dict]:
        name = None
        if field_selector:
            key, _, value = field_selector.partition("=")
            assert key == "metadata.name", f"unsupported field selector {field_selector}"
            name = value
        with self.cond:
            out = []
            for (k, ns, n), obj in sorted(self.objects.items()):
                if k != kind or ns != namespace or (name is not None and n != name):
                    continue
                if _matches(obj.get("metadata", {}).get("labels") or {}, label_selector):
                    out.append(obj)
            return out

    def calls(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # ------------------------------------------------------------------ playing the controllers
    def add_pod_template(self, template: dict, namespace: str) -> None:
        obj = copy.deepcopy(template)
        obj["metadata"]["namespace"] = namespace
        self.put("podtemplates", obj)

    def job(self, name: str, namespace: str = "leap") -> dict:
        job = self.get("jobs", namespace, name)
        assert job is not None, f"no job {name}"
        return job

    def _pod_for(self, job: dict, suffix: str) -> dict:
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {}),
                  "batch.kubernetes.io/job-name": name, "job-name": name}
        container = template["spec"]["containers"][0]
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{name}-{suffix}", "namespace": job["metadata"]["namespace"], "labels": labels,
                             "ownerReferences": [owner]},
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending", "containerStatuses": [
                    {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                     "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}}

    def start_job(self, name: str, namespace: str = "leap", suffix: str = "a1b2c") -> dict:
        with self.cond:
            job = self.job(name, namespace)
            pod = self._pod_for(job, suffix)
            pod["status"]["phase"] = "Running"
            pod["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": _now()}}
            self.put("pods", pod)
            job["status"] = {"active": 1, "startTime": _now()}
            self.put("jobs", job)
            return pod

    def stick_pod(self, name: str, reason: str = "ImagePullBackOff", namespace: str = "leap",
                  message: str = "Back-off pulling image") -> dict:
        with self.cond:
            job = self.job(name, namespace)
            pod = self._pod_for(job, "stuck")
            pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": reason, "message": message}}
            self.put("pods", pod)
            job["status"] = {"active": 1}
            self.put("jobs", job)
            return pod

    def finish_job(self, name: str, *, succeeded: bool, message: str = "", exit_code: int | None = None,
                   reason: str | None = None, logs: str = "", namespace: str = "leap", suffix: str = "x9y8z") -> dict:
        """The pod ends (with this termination message and log) and the Job gets its final condition."""
        with self.cond:
            job = self.job(name, namespace)
            pod = self._pod_for(job, suffix)
            code = exit_code if exit_code is not None else (0 if succeeded else 1)
            pod["status"]["phase"] = "Succeeded" if succeeded else "Failed"
            pod["status"]["containerStatuses"][0]["state"] = {"terminated": {
                "exitCode": code, "reason": reason or ("Completed" if succeeded else "Error"), "message": message,
                "startedAt": _now(), "finishedAt": _now()}}
            self.put("pods", pod)
            self.logs[(namespace, pod["metadata"]["name"])] = logs
            if succeeded:
                cond = {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
                job["status"] = {"succeeded": 1, "conditions": [cond], "completionTime": _now()}
            else:
                cond = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit", "lastTransitionTime": _now()}
                job["status"] = {"failed": 1, "conditions": [cond]}
            self.put("jobs", job)
            return pod

    def set_student_endpoints(self, replicas: list[tuple[str, int, bool]], *, namespace: str = "leap",
                              service: str = "leap-student") -> None:
        """Replicas as (ip, port, ready); one EndpointSlice per distinct port, like the controller."""
        with self.cond:
            for key in [k for k in self.objects if k[0] in ("endpointslices", "endpoints")]:
                del self.objects[key]
            by_port: dict[int, list[tuple[str, bool]]] = {}
            for ip, port, ready in replicas:
                by_port.setdefault(port, []).append((ip, ready))
            for i, (port, eps) in enumerate(sorted(by_port.items())):
                self.put("endpointslices", {
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"name": f"{service}-{i}", "namespace": namespace,
                                 "labels": {"kubernetes.io/service-name": service}},
                    "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
                    "endpoints": [{"addresses": [ip], "conditions": {"ready": ready, "serving": ready,
                                                                     "terminating": False}} for ip, ready in eps]})
            subsets = [{"addresses": [{"ip": ip} for ip, ready in eps if ready],
                        "notReadyAddresses": [{"ip": ip} for ip, ready in eps if not ready],
                        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}]}
                       for port, eps in sorted(by_port.items())]
            self.put("endpoints", {"apiVersion": "v1", "kind": "Endpoints",
                                   "metadata": {"name": service, "namespace": namespace}, "subsets": subsets})


_ROUTES = [
    ("podtemplates", re.compile(r"^/api/v1/namespaces/([^/]+)/podtemplates(?:/([^/]+))?$")),
    ("jobs", re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?$")),
    ("pod-log", re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")),
    ("pods", re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$")),
    ("endpointslices", re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/endpointslices(?:/([^/]+))?$")),
    ("endpoints", re.compile(r"^/api/v1/namespaces/([^/]+)/endpoints(?:/([^/]+))?$")),
    ("configmaps", re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$")),
]
_LIST_KINDS = {"podtemplates": ("v1", "PodTemplateList"), "jobs": ("batch/v1", "JobList"),
               "pods": ("v1", "PodList"), "endpointslices": ("discovery.k8s.io/v1", "EndpointSliceList"),
               "endpoints": ("v1", "EndpointsList"), "configmaps": ("v1", "ConfigMapList")}
# An object's `kind` -> the store's resource name (for ownerReferences).
KIND_OF = {"Job": "jobs", "Pod": "pods", "PodTemplate": "podtemplates", "ConfigMap": "configmaps",
           "EndpointSlice": "endpointslices", "Endpoints": "endpoints"}


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _send(self, code: int, payload, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self):
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for kind, pattern in _ROUTES:
            m = pattern.match(url.path)
            if m:
                return kind, m.groups(), query, url.path
        return None, (), query, url.path

    def _record(self, path: str, query: dict, body: dict | None) -> None:
        with self.kube.cond:
            self.kube.requests.append(Recorded(self.command, path, query, body))

    # ------------------------------------------------------------------ verbs
    def do_POST(self) -> None:  # noqa: N802
        kind, groups, query, path = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self._record(path, query, body)
        if kind != "jobs" or groups[1]:
            return self._send(405, _status(405, "MethodNotAllowed", f"POST {path} is not served here"))
        namespace = groups[0]
        if body.get("kind") != "Job" or not body.get("metadata", {}).get("name"):
            return self._send(422, _status(422, "Invalid", "a Job with metadata.name is required"))
        for ref in body["metadata"].get("ownerReferences") or []:
            missing = [k for k in ("apiVersion", "kind", "name", "uid") if not ref.get(k)]
            if missing:
                return self._send(422, _status(422, "Invalid", f"metadata.ownerReferences: {missing} required"))
        body["metadata"]["namespace"] = namespace
        with self.kube.cond:
            if self.kube.get("jobs", namespace, body["metadata"]["name"]) is not None:
                return self._send(409, _status(409, "AlreadyExists",
                                               f'jobs.batch "{body["metadata"]["name"]}" already exists'))
            body.setdefault("status", {})
            created = self.kube.put("jobs", body)
            snapshot = copy.deepcopy(created)
            self.kube.collect_garbage()  # a Job whose owner does not exist is collected right away
        self._send(201, snapshot)
        if self.kube.on_job_created is not None:
            self.kube.on_job_created(snapshot)

    def do_PATCH(self) -> None:  # noqa: N802
        kind, groups, query, path = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self._record(path, query, body)
        content_type = self.headers.get("Content-Type", "")
        if kind != "configmaps" or not groups[1]:
            return self._send(405, _status(405, "MethodNotAllowed", f"PATCH {path} is not served here"))
        if "merge-patch" not in content_type or not isinstance(body, dict):
            return self._send(415, _status(415, "UnsupportedMediaType", f"{content_type} is not served here"))
        with self.kube.cond:
            obj = self.kube.get("configmaps", groups[0], groups[1])
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'configmaps "{groups[1]}" not found'))
            data = dict(obj.get("data") or {})
            for key, value in (body.get("data") or {}).items():
                if value is None:
                    data.pop(key, None)
                elif not isinstance(value, str):
                    return self._send(422, _status(422, "Invalid", f"data.{key}: a string is required"))
                else:
                    data[key] = value
            obj["data"] = data
            snapshot = copy.deepcopy(self.kube.put("configmaps", obj))
        self._send(200, snapshot)

    def do_DELETE(self) -> None:  # noqa: N802
        kind, groups, query, path = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self._record(path, query, body)
        if kind != "jobs" or not groups[1]:
            return self._send(405, _status(405, "MethodNotAllowed", f"DELETE {path} is not served here"))
        # The kubernetes client sends DeleteOptions in the body; without one, batch/v1 Jobs orphan.
        propagation = body.get("propagationPolicy") or query.get("propagationPolicy") or "Orphan"
        deleted = self.kube.delete("jobs", groups[0], groups[1], propagation)
        if deleted is None:
            return self._send(404, _status(404, "NotFound", f'jobs.batch "{groups[1]}" not found'))
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "details": {"name": groups[1], "group": "batch", "kind": "jobs",
                                     "uid": deleted["metadata"]["uid"]}})

    def do_GET(self) -> None:  # noqa: N802
        kind, groups, query, path = self._route()
        self._record(path, query, None)
        if kind is None:
            return self._send(404, _status(404, "NotFound", f"the server could not find {path}"))
        namespace, name = groups[0], groups[1]
        if kind == "pod-log":
            pod = self.kube.get("pods", namespace, name)
            if pod is None:
                return self._send(404, _status(404, "NotFound", f'pods "{name}" not found'))
            lines = self.kube.logs.get((namespace, name), "").splitlines()
            tail = int(query.get("tailLines", 0) or 0)
            text = "\n".join(lines[-tail:] if tail else lines) + ("\n" if lines else "")
            return self._send(200, text.encode(), "text/plain")
        if kind == "endpointslices" and not self.kube.endpointslices_enabled:
            return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
        if name:
            obj = self.kube.get(kind, namespace, name)
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{kind} "{name}" not found'))
            return self._send(200, obj)
        if query.get("watch") in ("true", "1"):
            return self._watch(kind, namespace, query)
        api_version, list_kind = _LIST_KINDS[kind]
        items = self.kube.items(kind, namespace, query.get("labelSelector"), query.get("fieldSelector"))
        self._send(200, {"apiVersion": api_version, "kind": list_kind,
                         "metadata": {"resourceVersion": str(self.kube.rv)}, "items": items})

    def _watch(self, kind: str, namespace: str, query: dict) -> None:
        """Chunked stream of watch events until timeoutSeconds (capped) or shutdown."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + min(float(query.get("timeoutSeconds") or 5), 10.0)
        sent: dict[str, int] = {}

        def chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        try:
            with self.kube.cond:
                while True:
                    for obj in self.kube.items(kind, namespace, query.get("labelSelector"),
                                               query.get("fieldSelector")):
                        rv = int(obj["metadata"]["resourceVersion"])
                        uid = obj["metadata"]["uid"]
                        if rv <= since or sent.get(uid) == rv:
                            continue
                        kind_of_event = "ADDED" if (uid not in sent and not since) else "MODIFIED"
                        sent[uid] = rv
                        chunk(json.dumps({"type": kind_of_event, "object": obj}).encode() + b"\n")
                    for rv, k, ns, obj in list(self.kube.tombstones):
                        uid = obj["metadata"]["uid"]
                        if k != kind or ns != namespace or rv <= since or sent.get(uid) == -rv:
                            continue
                        if query.get("fieldSelector") and query["fieldSelector"] != f"metadata.name={obj['metadata']['name']}":
                            continue
                        if not _matches(obj["metadata"].get("labels") or {}, query.get("labelSelector")):
                            continue
                        sent[uid] = -rv
                        chunk(json.dumps({"type": "DELETED", "object": obj}).encode() + b"\n")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.kube.cond.wait(timeout=min(remaining, 0.5))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


def project_configmap(kube: FakeKube, namespace: str, name: str, directory: Path) -> None:
    """Play the kubelet: write a ConfigMap's data into a mounted folder, as its atomic writer does.

    Files live in a timestamped folder, `..data` points at it and each key is a symlink through
    `..data`; an update writes a new folder and swaps `..data` with one rename, so a reader sees
    the old content or the new, never a mix. Keys that left the ConfigMap disappear.
    """
    obj = kube.get("configmaps", namespace, name)
    assert obj is not None, f"no ConfigMap {namespace}/{name}"
    directory.mkdir(parents=True, exist_ok=True)
    fresh = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
    fresh.mkdir()
    data = obj.get("data") or {}
    for key, value in data.items():
        (fresh / key).write_text(value)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    tmp = directory / "..data_tmp"
    os.symlink(fresh.name, tmp)
    os.replace(tmp, directory / "..data")
    for key in data:
        link = directory / key
        if not link.is_symlink():
            os.symlink(f"..data/{key}", link)
    for entry in directory.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in data:
            entry.unlink()
    if old:
        shutil.rmtree(directory / old, ignore_errors=True)
