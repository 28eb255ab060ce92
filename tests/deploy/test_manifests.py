"""The Kubernetes manifests: rendered by kustomize, valid against the 1.29-1.34 schemas (strict), clean under
checkov and yamllint, and structurally what the design promises: probes, resources and hardening; two
namespaces with the privileged plane sealed off (RBAC, NetworkPolicy in and out, and the optional
admission policy, whose CEL expressions are evaluated here); storage, images and rollouts a real
cluster accepts; a run config the orchestrator accepts.

No cluster can run here: these checks are what stands in for `kubectl apply`.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from leap.v1 import common_pb2, trainer_pb2
from orchestrator.platforms.kubernetes import (
    DESIRED_CONFIGMAP,
    GPU_RESOURCE,
    PLACEHOLDER_REGISTRY,
    PlatformSettings,
    build_trainer_job,
    owner_reference,
)
from tests.deploy.conftest import (
    COMPONENT_VERSIONS,
    DEPLOY,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    ROOT,
    TOOLS,
    by_kind,
    pod_spec,
    run_tool,
)
from tests.deploy.rbac import rbac_allows

PRIV, RUN_NS = "leap-privileged", "leap"
SERVICES = {  # Deployment -> (namespace, gRPC port, health service name)
    "leap-environment": (PRIV, 50051, "leap.v1.EnvironmentService"),
    "leap-student": (RUN_NS, 50061, "leap.v1.StudentService"),
    "leap-teacher": (PRIV, 50071, "leap.v1.TeacherService"),
}
PRIVILEGED_PORT = 50052
ORCHESTRATOR_SA = f"system:serviceaccount:{RUN_NS}:leap-orchestrator"
SECRET_TEMPLATES = sorted((DEPLOY / "secrets").glob("*.yaml"))


def sample_trainer_jobs(rendered, out_dir: Path) -> dict[str, Path]:
    """The trainer Jobs the orchestrator would create from each overlay's PodTemplate (owned by leap-run)."""
    request = trainer_pb2.StartJobRequest(
        method=trainer_pb2.TRAINING_METHOD_SFT, base_model="smollm2", output_name="student",
        run_dir="/runs/k8s-household",
        datasets=[common_pb2.ArtifactRef(uri="/runs/k8s-household/datasets/train-iter1-sft.jsonl", format="jsonl")])
    files = {}
    for overlay in OVERLAYS:
        template = by_kind(rendered[overlay], "PodTemplate")["leap-trainer"]
        job = build_trainer_job(template, request, job_id="0a1b2c3d-iter1-a1", run="k8s-household-0a1b2c3d",
                                settings=PlatformSettings(namespace=RUN_NS),
                                owner=owner_reference("leap-run", "5f0c3b1e-7d4a-4c1e-9a53-0c6b1f2e8d77"))
        files[overlay] = out_dir / f"trainer-job-{overlay}.yaml"
        files[overlay].write_text(yaml.safe_dump(job, sort_keys=False))
    return files


@pytest.fixture(scope="module")
def trainer_jobs(rendered, tmp_path_factory) -> dict[str, Path]:
    return sample_trainer_jobs(rendered, tmp_path_factory.mktemp("trainer-jobs"))


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job", "PodTemplate")]


# ---------------------------------------------------------------------------------- linters
def test_every_kustomization_renders_the_expected_resources(rendered):
    for overlay in (*OVERLAYS, "components"):
        placed = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in rendered[overlay]}
        for name, (ns, _port, _svc) in SERVICES.items():
            for kind in ("Deployment", "Service", "PodDisruptionBudget"):
                assert (kind, name, ns) in placed, f"{overlay}: {kind} {name} not in namespace {ns}"
        for expected in [("PodTemplate", "leap-trainer", RUN_NS), ("HorizontalPodAutoscaler", "leap-environment", PRIV),
                         ("PersistentVolumeClaim", "leap-runs", RUN_NS), ("ServiceAccount", "leap-orchestrator", RUN_NS),
                         ("Role", "leap-orchestrator", RUN_NS), ("RoleBinding", "leap-orchestrator", RUN_NS),
                         ("NetworkPolicy", "default-deny", RUN_NS), ("NetworkPolicy", "default-deny", PRIV),
                         ("Service", "leap-environment-privileged", PRIV), ("ConfigMap", DESIRED_CONFIGMAP, RUN_NS),
                         ("Namespace", RUN_NS, None), ("Namespace", PRIV, None)]:
            assert expected in placed, f"{overlay}: {expected} missing"
        cluster_scoped = {"Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
        for d in rendered[overlay]:
            assert (d["kind"] in cluster_scoped) == ("namespace" not in d["metadata"]), d["metadata"]["name"]
    kinds = {d["kind"] for d in rendered["components"]}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    assert not kinds & {"ValidatingAdmissionPolicy"} & {d["kind"] for d in rendered["gpu"]}, "opt-in only"
    run_kinds = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap"
                  else d["metadata"]["name"]) for d in rendered["run"]}
    assert ("Job", "leap-run") in run_kinds and ("ConfigMap", "leap-run-config") in run_kinds


def _validate(tools, files: list[str], version: str) -> None:
    proc = run_tool([tools["kubernetes-validate"], "--strict", "--kubernetes-version", version, "--quiet", *files])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # A kind the version does not know is only a warning there: here it fails.
    assert "ERROR" not in out and "WARN" not in out, out


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_validates_against_the_kubernetes_schemas_strictly(tools, rendered_files, trainer_jobs,
                                                                         version):
    files = [str(rendered_files[k]) for k in ("base", *OVERLAYS, "run")]
    files += [*map(str, trainer_jobs.values()), *map(str, SECRET_TEMPLATES)]
    _validate(tools, files, version)


@pytest.mark.parametrize("version", COMPONENT_VERSIONS)
def test_the_components_validate_from_kubernetes_1_30(tools, rendered_files, version):
    _validate(tools, [str(rendered_files["components"])], version)


def test_checkov_passes_on_rendered_manifests_and_trainer_jobs(tools, rendered_files, trainer_jobs, tmp_path):
    scan = tmp_path / "scan"
    scan.mkdir()
    # What gets applied: the overlays (the base alone names no image; it is never applied by itself).
    applied = [path for name, path in rendered_files.items() if name != "base"]
    for path in [*applied, *trainer_jobs.values(), *SECRET_TEMPLATES]:
        (scan / path.name).write_text(path.read_text())
    proc = run_tool([tools["checkov"], "--config-file", str(DEPLOY / "checkov.yaml"), "-d", str(scan),
                     "--framework", "kubernetes", "secrets"])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "Failed checks: 0" in proc.stdout, proc.stdout[-6000:]


def test_checkov_passes_on_every_dockerfile(tools):
    from tests.deploy.conftest import DOCKERFILES

    args = [tools["checkov"], "--config-file", str(DEPLOY / "checkov.yaml"), "--framework", "dockerfile"]
    for path in DOCKERFILES:
        args += ["-f", str(path)]
    proc = run_tool(args)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_hadolint_passes(tools):
    from tests.deploy.conftest import DOCKERFILES

    for dockerfile in DOCKERFILES:
        proc = run_tool([tools["hadolint"], str(dockerfile)])
        assert proc.returncode == 0, dockerfile.name + ": " + proc.stdout + proc.stderr


def test_yamllint_passes_on_sources_and_rendered_output(tools, rendered_files):
    proc = run_tool([tools["yamllint"], "--strict", "-c", str(DEPLOY / "yamllint.yaml"), str(DEPLOY),
                     *map(str, rendered_files.values())])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_skipped_check_is_listed_with_its_reason(rendered):
    lines = (DEPLOY / "checkov.yaml").read_text().splitlines()
    skips = [line.strip()[2:] for line in lines if re.match(r"\s*-\s*CKV", line)]
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*CKV", line):
            assert lines[i - 1].strip().startswith("#"), f"deploy/checkov.yaml: {line.strip()} has no reason above it"
    # The images carry digests now: "image should use digest" runs on every resource.
    assert skips == ["CKV_K8S_15"], skips
    annotations = set()
    for docs in rendered.values():
        for d in docs:
            for key, value in (d["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    annotations.add((d["metadata"]["name"], check))
                    assert re.fullmatch(r"CKV2?_[A-Z0-9_]+", check), value
                    assert len(reason.strip()) >= 30, f"{d['metadata']['name']}: skip {check} needs a real reason"
    # No new per-resource skips either.
    assert annotations == {("leap-trainer", "CKV_K8S_8"), ("leap-trainer", "CKV_K8S_9"),
                           ("leap-teacher", "CKV_K8S_35"), ("leap-run", "CKV_K8S_38")}, annotations


# ---------------------------------------------------------------------------------- structure
def _grpc_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or []}


def _assert_hardened(name: str, spec: dict) -> None:
    psc = spec.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
    assert psc.get("runAsUser", 0) >= 10000, f"{name}: a high numeric UID"
    assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault"
    assert psc.get("fsGroupChangePolicy") == "OnRootMismatch", f"{name}: no recursive chown of every volume"
    assert spec.get("enableServiceLinks") is False, f"{name}: service links would inject LEAP_*_PORT variables"
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for c in spec["containers"]:
        sc = c.get("securityContext") or {}
        assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: read-only root"
        assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: no privilege escalation"
        assert sc.get("privileged") in (None, False)
        assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{name}/{c['name']}: drop ALL"
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind) or {}), f"{name}/{c['name']}: {kind} cpu+memory"
        tmp = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}/{c['name']}: writable /tmp (emptyDir)"
        # The placeholder registry with a tag and a digest: nothing resolves until an overlay sets it.
        assert re.fullmatch(rf"{PLACEHOLDER_REGISTRY}/leap-serve/[a-z]+:[0-9][\w.-]*@sha256:[0-9a-f]{{64}}",
                            c["image"]), f"{name}: image {c['image']}"
        # preStop as an exec (the sleep action needs 1.30; 1.29 is supported).
        pre = ((c.get("lifecycle") or {}).get("preStop") or {})
        assert "sleep" not in pre, f"{name}: preStop.sleep is rejected by Kubernetes 1.29"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_grpc_probes_resources_and_a_security_context(rendered, overlay):
    deployments = by_kind(rendered[overlay], "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, dep in deployments.items():
        spec = pod_spec(dep)
        _assert_hardened(name, spec)
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no API token in service pods"
        ns, port, service = SERVICES[name]
        (container,) = spec["containers"]
        assert _grpc_ports(container)["grpc"] == port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = (container.get(probe) or {}).get("grpc")
            assert grpc == {"port": port, "service": service}, f"{name}: {probe} must be a native gRPC probe"
        grace = spec.get("terminationGracePeriodSeconds", 30)
        env_cm = by_kind(rendered[overlay], "ConfigMap", ns)[container["envFrom"][0]["configMapRef"]["name"]]
        assert float(env_cm["data"]["LEAP_GRACE_SECONDS"]) + 5 < grace, f"{name}: drain must finish before SIGKILL"
        assert env_cm["data"]["LEAP_HOST"] == "0.0.0.0" and int(env_cm["data"]["LEAP_PORT"]) == port
        # Replicas that clients balance over ask them to reconnect (and so re-resolve) now and then;
        # the environment does not: a client's sessions live on the replica its connection reached.
        age = float(env_cm["data"].get("LEAP_MAX_CONNECTION_AGE_SECONDS", 0))
        if name == "leap-environment":
            assert age == 0
        else:
            assert 60 <= age <= 3600 and float(env_cm["data"]["LEAP_MAX_CONNECTION_AGE_GRACE_SECONDS"]) >= 600


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_template_and_orchestrator_job_are_hardened_too(rendered, overlay):
    template = by_kind(rendered[overlay], "PodTemplate")["leap-trainer"]
    _assert_hardened("leap-trainer", pod_spec(template))
    assert pod_spec(template)["restartPolicy"] == "Never"
    job = by_kind(rendered["run"], "Job")["leap-run"]
    spec = pod_spec(job)
    _assert_hardened("leap-run", spec)
    assert spec["serviceAccountName"] == "leap-orchestrator"


def test_the_orchestrator_job_owns_its_trainer_jobs_and_ignores_disruptions(rendered, trainer_jobs):
    job = by_kind(rendered["run"], "Job")["leap-run"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert {"action": "FailJob", "onExitCodes": {"containerName": "orchestrator", "operator": "In",
                                                 "values": [2]}} in rules
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never", "a pod failure policy needs restartPolicy Never"
    assert spec["terminationGracePeriodSeconds"] >= 30, "time to cancel the trainer Jobs on SIGTERM"
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    # The downward API names the Job to the orchestrator: the owner of every trainer Job.
    assert env["LEAP_K8S_OWNER_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["LEAP_K8S_OWNER_JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/controller-uid']"
    for path in trainer_jobs.values():
        owner = yaml.safe_load(path.read_text())["metadata"]["ownerReferences"]
        assert owner == [{"apiVersion": "batch/v1", "kind": "Job", "name": "leap-run",
                          "uid": "5f0c3b1e-7d4a-4c1e-9a53-0c6b1f2e8d77"}]


def test_services_select_their_pods_and_student_is_headless(rendered):
    docs = rendered["gpu"]
    deployments = by_kind(docs, "Deployment")
    for svc in [d for d in docs if d["kind"] == "Service"]:
        ns = svc["metadata"]["namespace"]
        target = next(d for d in deployments.values() if d["metadata"]["namespace"] == ns
                      and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                              for k, v in svc["spec"]["selector"].items()))
        ports = _grpc_ports(pod_spec(target)["containers"][0])
        for p in svc["spec"]["ports"]:
            assert ports[p["targetPort"]] == p["port"], f"{svc['metadata']['name']}: port {p}"
    assert by_kind(docs, "Service")["leap-student"]["spec"]["clusterIP"] == "None"
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        dep = deployments[pdb["metadata"]["name"]]
        assert pdb["spec"]["selector"] == dep["spec"]["selector"]
        assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["leap-environment"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "leap-environment"}


def test_gpu_overlay_requests_gpus_for_student_and_trainer_and_rolls_students_in_place(rendered, trainer_jobs):
    gpu = rendered["gpu"]
    student_dep = by_kind(gpu, "Deployment")["leap-student"]
    student = pod_spec(student_dep)["containers"][0]
    trainer = pod_spec(by_kind(gpu, "PodTemplate")["leap-trainer"])["containers"][0]
    for name, c in (("student", student), ("trainer", trainer)):
        assert c["resources"]["limits"].get(GPU_RESOURCE) == "1", f"{name} must request a GPU"
        assert ":0.1.0-cuda@sha256:" in c["image"], f"{name} must use the CUDA image"
    # No surge: a surge replica would wait for a GPU the deployment does not have.
    assert student_dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    config = by_kind(gpu, "ConfigMap", RUN_NS)
    student_cm = next(v for k, v in config.items() if k.startswith("leap-student-config"))
    assert student_cm["data"]["LEAP_DEVICE"] == "cuda"
    job = yaml.safe_load(trainer_jobs["gpu"].read_text())
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "1"
    # And nothing asks for a GPU in the CPU overlay.
    assert GPU_RESOURCE not in trainer_jobs["dev-cpu"].read_text()
    assert GPU_RESOURCE not in yaml.safe_dump_all(rendered["dev-cpu"])
    for name in ("leap-student", "leap-trainer"):
        kind = "Deployment" if name == "leap-student" else "PodTemplate"
        assert ":0.1.0-cpu@sha256:" in pod_spec(by_kind(rendered["dev-cpu"], kind)[name])["containers"][0]["image"]


@pytest.mark.parametrize("overlay", [*OVERLAYS, "run"])
def test_every_image_is_a_placeholder_that_fails_closed(rendered, overlay):
    images = {c["image"] for d in workloads(rendered[overlay]) for c in pod_spec(d)["containers"]}
    assert images
    for image in images:
        host = image.split("/", 1)[0]
        assert host == PLACEHOLDER_REGISTRY, f"{image} would resolve somewhere (docker.io by default)"
        assert host.endswith(".invalid"), "RFC 2606: .invalid never resolves"


def test_runs_volume_is_shared_at_the_same_path_with_a_storage_class_patch_point(rendered):
    gpu = rendered["gpu"]
    claim = by_kind(gpu, "PersistentVolumeClaim")["leap-runs"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # The patch point fails closed: no StorageClass has that name, so the claim waits for a choice
    # instead of binding a default class that is ReadWriteOnce.
    assert claim["spec"]["storageClassName"] == "set-a-readwritemany-storage-class"
    assert "storageClassName" in (DEPLOY / "overlays" / "gpu" / "storage.yaml").read_text()
    dev = by_kind(rendered["dev-cpu"], "PersistentVolumeClaim")["leap-runs"]
    assert dev["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in dev["spec"]
    for overlay in OVERLAYS:
        data = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())
        assert {"path": "storage.yaml"} in data["patches"], f"{overlay}: the storage patch point"
    mounts = {}
    objs = [*by_kind(gpu, "Deployment").values(), by_kind(gpu, "PodTemplate")["leap-trainer"],
            by_kind(rendered["run"], "Job")["leap-run"]]
    for obj in objs:
        spec = pod_spec(obj)
        claims = {v["name"] for v in spec.get("volumes") or []
                  if (v.get("persistentVolumeClaim") or {}).get("claimName") == "leap-runs"}
        for m in spec["containers"][0].get("volumeMounts") or []:
            if m["name"] in claims:
                mounts[obj["metadata"]["name"]] = (m["mountPath"], m.get("readOnly", False))
    assert mounts == {"leap-student": ("/runs", True), "leap-trainer": ("/runs", False), "leap-run": ("/runs", False)}
    assert PlatformSettings().runs_dir == "/runs"


def test_students_mount_the_desired_adapter_folder(rendered):
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        spec = pod_spec(by_kind(docs, "Deployment")["leap-student"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"]
                    if (volumes[m["name"]].get("configMap") or {}).get("name") == DESIRED_CONFIGMAP]
        # A subPath mount is never updated by the kubelet: the whole folder, read-only.
        assert "subPath" not in mount and mount["readOnly"] is True
        assert volumes[mount["name"]]["configMap"].get("optional") is not True, "a missing record must not mean base"
        cm = next(v for k, v in by_kind(docs, "ConfigMap", RUN_NS).items() if k.startswith("leap-student-config"))
        assert cm["data"]["LEAP_DESIRED_ADAPTER_FILE"] == mount["mountPath"] + "/desired.json"
        # No data: re-applying the platform never resets what a run recorded.
        assert "data" not in by_kind(docs, "ConfigMap", RUN_NS)[DESIRED_CONFIGMAP]


# ---------------------------------------------------------------------------------- network policy
def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"] or op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None or op == "DoesNotExist" and value is not None:
            return False
    return True


NAMESPACE_LABELS = {"monitoring": {}, "default": {}, "kube-system": {}, RUN_NS: {}, PRIV: {},
                    "my-agents": {"leap-serve/agent-access": "true"}}


def _peer_matches(peer: dict, policy_ns: str, pod: tuple[str, dict]) -> bool:
    ns, labels = pod
    if "ipBlock" in peer:
        return True  # CNIs may match pod IPs by ipBlock too: assume the widest reading
    ns_labels = {**NAMESPACE_LABELS.get(ns, {}), "kubernetes.io/metadata.name": ns}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
        return "podSelector" not in peer or _selects(peer["podSelector"], labels)
    return ns == policy_ns and _selects(peer["podSelector"], labels)


def _direction(policies: list[dict], pod: tuple[str, dict], peer: tuple[str, dict], port: int, protocol: str,
               kind: str) -> bool:
    ns, labels = pod
    selecting = [p for p in policies if p["metadata"]["namespace"] == ns and _selects(p["spec"]["podSelector"], labels)
                 and kind in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for p in selecting:
        for rule in p["spec"].get(key) or []:
            ports_ok = not rule.get("ports") or any(r.get("port") == port and r.get("protocol", "TCP") == protocol
                                                    for r in rule["ports"])
            peers = rule.get(peers_key)
            if ports_ok and (not peers or any(_peer_matches(x, ns, peer) for x in peers)):
                return True
    return False


def reachable(policies: list[dict], src: tuple[str, dict], dst: tuple[str, dict], port: int,
              protocol: str = "TCP") -> bool:
    """NetworkPolicy semantics: src's egress admits the connection and dst's ingress admits it."""
    return (_direction(policies, src, dst, port, protocol, "Egress")
            and _direction(policies, dst, src, port, protocol, "Ingress"))


def _pods(rendered, overlay: str) -> dict[str, tuple[str, dict]]:
    docs = rendered[overlay]
    pods = {name: (d["metadata"]["namespace"], d["spec"]["template"]["metadata"]["labels"])
            for name, d in by_kind(docs, "Deployment").items()}
    trainer = by_kind(docs, "PodTemplate")["leap-trainer"]
    pods["leap-trainer"] = (RUN_NS, trainer["template"]["metadata"]["labels"])
    pods["leap-run"] = (RUN_NS, by_kind(rendered["run"], "Job")["leap-run"]["spec"]["template"]["metadata"]["labels"])
    return pods


DNS = ("kube-system", {"k8s-app": "kube-dns"})


@pytest.mark.parametrize("overlay", [*OVERLAYS, "components"])
def test_network_policy_seals_the_privileged_plane(rendered, overlay):
    policies = [d for d in rendered[overlay] if d["kind"] == "NetworkPolicy"]
    pods = _pods(rendered, overlay)
    env, teacher, student = pods["leap-environment"], pods["leap-teacher"], pods["leap-student"]
    orchestrator, trainer = pods["leap-run"], pods["leap-trainer"]

    assert reachable(policies, teacher, env, PRIVILEGED_PORT)
    for name in ("leap-student", "leap-trainer", "leap-run", "leap-environment"):
        assert not reachable(policies, pods[name], env, PRIVILEGED_PORT), name
    # A pod in the run's namespace (a Job the orchestrator made) that copies the teacher's labels
    # is still not the teacher: the rule admits the privileged namespace's teacher only.
    impostor = (RUN_NS, dict(teacher[1]))
    assert not reachable(policies, impostor, env, PRIVILEGED_PORT)
    assert not reachable(policies, impostor, pods["leap-teacher"], 50071)
    for ns in ("monitoring", "default", "kube-system", "my-agents"):
        assert not reachable(policies, (ns, teacher[1]), env, PRIVILEGED_PORT), ns
    # The teacher gets nothing else from the environment, and reaches nothing else at all.
    for port in (50051, 9090):
        assert not reachable(policies, teacher, env, port)
    assert not reachable(policies, teacher, student, 50061)
    assert not reachable(policies, teacher, ("default", {}), 443), "no internet for the (oracle) teacher"
    assert reachable(policies, teacher, DNS, 53, "UDP")
    # The environment and the trainer open no connection; the student neither.
    for name in ("leap-environment", "leap-trainer", "leap-student"):
        for dst, port in ((env, 50051), (teacher, 50071), (student, 50061), (("default", {}), 443)):
            assert not reachable(policies, pods[name], dst, port), (name, dst, port)
    assert not reachable(policies, trainer, DNS, 53, "UDP")
    # The orchestrator reaches the three agent-facing services, the API server and DNS.
    for name, (_ns, port, _svc) in SERVICES.items():
        assert reachable(policies, orchestrator, pods[name], port), name
        assert not reachable(policies, ("default", {}), pods[name], port), name
    assert reachable(policies, orchestrator, ("default", {"component": "apiserver"}), 6443)
    assert reachable(policies, orchestrator, DNS, 53, "UDP") and reachable(policies, orchestrator, DNS, 53, "TCP")
    assert not reachable(policies, orchestrator, trainer, 50081)
    for name in SERVICES:
        assert reachable(policies, ("monitoring", {}), pods[name], 9090), name
    # The agent-access recipe: a labelled namespace reaches 50051 and 50061, never 50052.
    agent = ("my-agents", {"app": "my-agent"})
    opened = overlay == "components"
    assert reachable(policies, agent, env, 50051) == opened
    assert reachable(policies, agent, student, 50061) == opened
    assert not reachable(policies, agent, env, PRIVILEGED_PORT)
    assert not reachable(policies, agent, teacher, 50071)
    assert not reachable(policies, ("default", {"app": "my-agent"}), env, 50051)


def test_the_privileged_token_reaches_only_environment_and_teacher_in_their_namespace(rendered):
    users = set()
    for docs in rendered.values():
        for d in workloads(docs):
            spec = pod_spec(d)
            if any((v.get("secret") or {}).get("secretName") == "leap-privileged-token" for v in spec.get("volumes") or []):
                users.add((d["metadata"]["namespace"], d["metadata"]["name"]))
            assert "leap-privileged-token" not in yaml.safe_dump(spec["containers"][0].get("env") or []), d["metadata"]
    assert users == {(PRIV, "leap-environment"), (PRIV, "leap-teacher")}
    for path in SECRET_TEMPLATES:
        assert yaml.safe_load(path.read_text())["metadata"]["namespace"] == PRIV
    teacher_cm = next(v for k, v in by_kind(rendered["gpu"], "ConfigMap", PRIV).items()
                      if k.startswith("leap-teacher-config"))
    assert teacher_cm["data"]["LEAP_ENV_ADDR"] == f"leap-environment-privileged:{PRIVILEGED_PORT}"


def test_secret_templates_hold_placeholders_only():
    assert {p.name for p in SECRET_TEMPLATES} == {"privileged-token.example.yaml", "teacher-llm.example.yaml"}
    for path in SECRET_TEMPLATES:
        secret = yaml.safe_load(path.read_text())
        assert secret["kind"] == "Secret" and "data" not in secret
        for key, value in secret["stringData"].items():
            assert value.startswith("REPLACE_ME"), f"{path.name}: {key} must be a placeholder"
    kustomizations = "".join(p.read_text() for p in DEPLOY.rglob("kustomization.yaml"))
    assert "secrets/" not in kustomizations and "secretGenerator" not in kustomizations


# ---------------------------------------------------------------------------------- RBAC
def test_the_orchestrator_account_has_no_right_in_the_privileged_namespace(rendered):
    docs = [d for key in ("components", "run") for d in rendered[key]]
    grants = [("create", "batch", "jobs"), ("get", "", "secrets"), ("list", "", "secrets"), ("create", "", "pods"),
              ("get", "", "pods"), ("create", "apps", "deployments"), ("patch", "apps", "deployments"),
              ("create", "", "pods/exec"), ("get", "", "configmaps"), ("create", "", "serviceaccounts/token")]
    for verb, group, resource in grants:
        assert not rbac_allows(docs, ORCHESTRATOR_SA, verb, group, resource, PRIV, "leap-privileged-token"), \
            (verb, resource)
    # Nor cluster-wide, nor any Secret, Pod or RBAC object in its own namespace.
    for verb, group, resource in [("get", "", "secrets"), ("create", "", "pods"), ("create", "", "pods/exec"),
                                  ("create", "rbac.authorization.k8s.io", "rolebindings"),
                                  ("patch", "", "configmaps"), ("update", "batch", "jobs")]:
        assert not rbac_allows(docs, ORCHESTRATOR_SA, verb, group, resource, RUN_NS, "x"), (verb, resource)
    assert rbac_allows(docs, ORCHESTRATOR_SA, "create", "batch", "jobs", RUN_NS)
    assert rbac_allows(docs, ORCHESTRATOR_SA, "patch", "", "configmaps", RUN_NS, DESIRED_CONFIGMAP)
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in docs), "no cluster-wide grant"


# ---------------------------------------------------------------------------------- admission policy
def _trainer_job(rendered) -> dict:
    template = by_kind(rendered["components"], "PodTemplate")["leap-trainer"]
    request = trainer_pb2.StartJobRequest(method=trainer_pb2.TRAINING_METHOD_SFT, base_model="smollm2",
                                          output_name="student", run_dir="/runs/k8s-household")
    return build_trainer_job(template, request, job_id="0a1b2c3d-iter1-a1", run="k8s-household-0a1b2c3d",
                             settings=PlatformSettings(namespace=RUN_NS),
                             owner=owner_reference("leap-run", "5f0c3b1e-7d4a-4c1e-9a53-0c6b1f2e8d77"))


def _hostile_variants(job: dict) -> dict[str, tuple[dict, str]]:
    """name -> (request object, what the refusal must say)."""
    out: dict[str, tuple[dict, str]] = {}

    def variant(name: str, why: str, change) -> None:
        obj = copy.deepcopy(job)
        change(obj, obj["spec"]["template"]["spec"])
        out[name] = (obj, why)

    token_volume = {"name": "token", "secret": {"secretName": "leap-privileged-token"}}
    variant("mounts the privileged token", "mounts emptyDir volumes and the leap-runs claim only",
            lambda o, s: (s["volumes"].append(token_volume),
                          s["containers"][0]["volumeMounts"].append({"name": "token", "mountPath": "/t"})))
    variant("mounts a projected token", "mounts emptyDir volumes and the leap-runs claim only",
            lambda o, s: s["volumes"].append({"name": "p", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}}, {"secret": {"name": "leap-privileged-token"}}]}}))
    variant("mounts a host path", "mounts emptyDir volumes and the leap-runs claim only",
            lambda o, s: s["volumes"].append({"name": "h", "hostPath": {"path": "/var/run/secrets"}}))
    variant("mounts another claim", "mounts emptyDir volumes and the leap-runs claim only",
            lambda o, s: s["volumes"].append({"name": "c", "persistentVolumeClaim": {"claimName": "other"}}))
    variant("carries the teacher's pod label", "must carry the trainer's pod label",
            lambda o, s: o["spec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/name": "leap-teacher"}))
    variant("adds the teacher's component label", "must not carry the teacher's or the environment's labels",
            lambda o, s: o["spec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/component": "teacher"}))
    variant("labels the Job as the environment", "must not carry the teacher's or the environment's labels",
            lambda o, s: o["metadata"]["labels"].update({"role": "leap-environment"}))
    variant("has no pod labels", "must carry the trainer's pod label",
            lambda o, s: o["spec"]["template"].pop("metadata"))
    variant("reads a Secret into env", "reads no Secret",
            lambda o, s: s["containers"][0].setdefault("env", []).append(
                {"name": "T", "valueFrom": {"secretKeyRef": {"name": "leap-privileged-token", "key": "token"}}}))
    variant("reads a Secret with envFrom", "reads no Secret",
            lambda o, s: s["containers"][0].setdefault("envFrom", []).append({"secretRef": {"name": "leap-teacher-llm"}}))
    variant("hides it in an init container", "reads no Secret",
            lambda o, s: s.setdefault("initContainers", []).append(
                {"name": "i", "image": "x", "envFrom": [{"secretRef": {"name": "leap-privileged-token"}}]}))
    variant("mounts an API token", "runs without an API token",
            lambda o, s: s.update({"automountServiceAccountToken": True}))
    variant("leaves the token default", "runs without an API token",
            lambda o, s: s.pop("automountServiceAccountToken"))
    variant("runs as the orchestrator", "runs without an API token",
            lambda o, s: s.update({"serviceAccountName": "leap-orchestrator"}))
    variant("uses the node network", "does not use the node's network",
            lambda o, s: s.update({"hostNetwork": True}))
    return out


def _evaluate(tools, policy: dict, requests: list[dict]) -> list[dict]:
    python = str(TOOLS / "venv" / "bin" / "python")
    proc = run_tool([python, str(ROOT / "tests" / "deploy" / "vap_eval.py")],
                    input=json.dumps({"policy": policy, "requests": requests}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _request(obj: dict, *, user: str = ORCHESTRATOR_SA, namespace: str = RUN_NS,
             resource: tuple[str, str, str] = ("batch", "v1", "jobs"), operation: str = "CREATE") -> dict:
    group, version, res = resource
    return {"operation": operation, "namespace": namespace, "userInfo": {"username": user},
            "resource": {"group": group, "version": version, "resource": res}, "object": obj}


def test_the_admission_policy_refuses_privileged_jobs_from_the_orchestrators_account(tools, rendered):
    policy = by_kind(rendered["components"], "ValidatingAdmissionPolicy")["leap-orchestrator-creates-trainer-jobs-only"]
    binding = by_kind(rendered["components"], "ValidatingAdmissionPolicyBinding")[policy["metadata"]["name"]]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    job = _trainer_job(rendered)
    hostile = _hostile_variants(job)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app.kubernetes.io/name": "leap-trainer"}},
           "spec": copy.deepcopy(job["spec"]["template"]["spec"])}
    requests = [_request(job)]                                                     # 0 the real trainer Job
    requests += [_request(obj) for obj, _why in hostile.values()]                  # 1.. each hostile variant
    requests += [_request(job, namespace=PRIV),                                    # a trainer Job elsewhere
                 _request(pod, resource=("", "v1", "pods")),                       # a bare pod
                 _request(job, operation="UPDATE"),                                # the real Job, updated
                 _request(hostile["mounts the privileged token"][0], user="kubernetes-admin"),  # someone else
                 _request(hostile["mounts the privileged token"][0],
                          user="system:serviceaccount:other:leap-orchestrator"),  # a namesake elsewhere
                 _request({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": DESIRED_CONFIGMAP},
                           "data": {"desired.json": "{}"}},
                          resource=("", "v1", "configmaps"), operation="UPDATE")]  # recording the adapter
    results = _evaluate(tools, policy, requests)
    assert results[0] == {"matched": True, "allowed": True, "messages": []}, results[0]
    for (name, (_obj, why)), result in zip(hostile.items(), results[1:]):
        assert result["matched"] and not result["allowed"], f"{name}: admitted"
        assert any(why in m for m in result["messages"]), f"{name}: {result['messages']}"
    elsewhere, bare_pod, update, admin, namesake, record = results[1 + len(hostile):]
    assert not elsewhere["allowed"] and any("namespace leap" in m for m in elsewhere["messages"])
    assert not bare_pod["allowed"]
    assert update["allowed"]
    assert not admin["matched"] and not namesake["matched"], "the policy is about the orchestrator's account only"
    assert record["allowed"], "the orchestrator's patch of the desired-adapter ConfigMap must go through"


# ---------------------------------------------------------------------------------- run config
def test_run_config_is_accepted_by_the_orchestrator_and_names_every_service(rendered, tmp_path):
    from orchestrator.config import load_config

    cm = next(d for d in rendered["run"] if d["kind"] == "ConfigMap")
    path = tmp_path / "run.yaml"
    path.write_text(cm["data"]["run.yaml"])
    config = load_config(path)
    assert config.environment.address == f"leap-environment.{PRIV}.svc:50051"
    assert config.student.address == "dns:///leap-student:50061"
    assert config.teacher.address == f"leap-teacher.{PRIV}.svc:50071"
    # The names resolve to the Services the platform renders, in their namespaces.
    services = {(d["metadata"]["name"], d["metadata"]["namespace"]) for d in rendered["gpu"] if d["kind"] == "Service"}
    assert {("leap-environment", PRIV), ("leap-teacher", PRIV), ("leap-student", RUN_NS)} <= services
    student_cm = next(v for k, v in by_kind(rendered["gpu"], "ConfigMap", RUN_NS).items()
                      if k.startswith("leap-student-config"))
    assert config.student.model == student_cm["data"]["LEAP_MODEL"], "the trainer's base model is the student's"
    job = by_kind(rendered["run"], "Job")["leap-run"]
    script = " ".join(pod_spec(job)["containers"][0]["command"])
    assert "--platform kubernetes" in script and "--resume" in script
    assert "/etc/leap/run/run.yaml" in script


def test_checked_in_yaml_matches_what_ci_renders():
    # Overlays reference only files inside deploy/ (a render cannot pick up a stray local file).
    for k in DEPLOY.rglob("kustomization.yaml"):
        data = yaml.safe_load(k.read_text())
        refs = (data.get("resources") or []) + (data.get("components") or [])
        refs += [p["path"] for p in data.get("patches") or [] if "path" in p]
        for ref in refs:
            target = (k.parent / ref).resolve()
            assert target.exists() and DEPLOY.resolve() in (target, *target.parents), f"{k}: {ref}"
    assert (ROOT / ".dockerignore").exists()
