"""The Kubernetes manifests: rendered by kustomize, valid against the 1.34 schemas (strict), clean under
checkov and yamllint, and structurally what the design promises (probes, resources, hardening, the
privileged port reachable from the teacher only, GPUs in the gpu overlay, a run config the
orchestrator accepts).

No cluster can run here: these checks are what stands in for `kubectl apply`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from leap.v1 import common_pb2, trainer_pb2
from orchestrator.platforms.kubernetes import GPU_RESOURCE, PlatformSettings, build_trainer_job
from tests.deploy.conftest import DEPLOY, DOCKERFILES, KUBERNETES_VERSION, OVERLAYS, ROOT, by_kind, pod_spec, run_tool

SERVICES = {  # Deployment -> (gRPC port, health service name)
    "leap-environment": (50051, "leap.v1.EnvironmentService"),
    "leap-student": (50061, "leap.v1.StudentService"),
    "leap-teacher": (50071, "leap.v1.TeacherService"),
}
PRIVILEGED_PORT = 50052
SECRET_TEMPLATES = sorted((DEPLOY / "secrets").glob("*.yaml"))


def sample_trainer_jobs(rendered, out_dir: Path) -> dict[str, Path]:
    """The trainer Jobs the orchestrator would create from each overlay's PodTemplate."""
    request = trainer_pb2.StartJobRequest(
        method=trainer_pb2.TRAINING_METHOD_SFT, base_model="smollm2", output_name="student",
        run_dir="/runs/k8s-household",
        datasets=[common_pb2.ArtifactRef(uri="/runs/k8s-household/datasets/train-iter1-sft.jsonl", format="jsonl")])
    files = {}
    for overlay in OVERLAYS:
        template = by_kind(rendered[overlay], "PodTemplate")["leap-trainer"]
        job = build_trainer_job(template, request, job_id="0a1b2c3d-iter1-a1", run="k8s-household-0a1b2c3d",
                                settings=PlatformSettings(namespace="leap"))
        files[overlay] = out_dir / f"trainer-job-{overlay}.yaml"
        files[overlay].write_text(yaml.safe_dump(job, sort_keys=False))
    return files


@pytest.fixture(scope="module")
def trainer_jobs(rendered, tmp_path_factory) -> dict[str, Path]:
    return sample_trainer_jobs(rendered, tmp_path_factory.mktemp("trainer-jobs"))


# ---------------------------------------------------------------------------------- linters
def test_every_kustomization_renders_the_expected_resources(rendered):
    for overlay in OVERLAYS:
        kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered[overlay]}
        for name in SERVICES:
            assert ("Deployment", name) in kinds and ("Service", name) in kinds and \
                ("PodDisruptionBudget", name) in kinds, f"{overlay}: {name} incomplete"
        for expected in [("PodTemplate", "leap-trainer"), ("HorizontalPodAutoscaler", "leap-environment"),
                         ("PersistentVolumeClaim", "leap-runs"), ("ServiceAccount", "leap-orchestrator"),
                         ("Role", "leap-orchestrator"), ("RoleBinding", "leap-orchestrator"),
                         ("NetworkPolicy", "default-deny-ingress"), ("Service", "leap-environment-privileged"),
                         ("Namespace", "leap")]:
            assert expected in kinds, f"{overlay}: {expected} missing"
        assert all(d["metadata"].get("namespace") == "leap" for d in rendered[overlay] if d["kind"] != "Namespace")
    run_kinds = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap"
                  else d["metadata"]["name"]) for d in rendered["run"]}
    assert ("Job", "leap-run") in run_kinds and ("ConfigMap", "leap-run-config") in run_kinds


def test_every_resource_validates_against_the_kubernetes_schemas_strictly(tools, rendered_files, trainer_jobs):
    files = [*map(str, rendered_files.values()), *map(str, trainer_jobs.values()), *map(str, SECRET_TEMPLATES)]
    proc = run_tool([tools["kubernetes-validate"], "--strict", "--kubernetes-version", KUBERNETES_VERSION,
                     "--no-warn", *files])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout


def test_checkov_passes_on_rendered_manifests_and_trainer_jobs(tools, rendered_files, trainer_jobs, tmp_path):
    scan = tmp_path / "scan"
    scan.mkdir()
    for path in [*rendered_files.values(), *trainer_jobs.values(), *SECRET_TEMPLATES]:
        (scan / path.name).write_text(path.read_text())
    proc = run_tool([tools["checkov"], "--config-file", str(DEPLOY / "checkov.yaml"), "-d", str(scan),
                     "--framework", "kubernetes", "secrets"])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "Failed checks: 0" in proc.stdout, proc.stdout[-6000:]


def test_checkov_passes_on_every_dockerfile(tools):
    args = [tools["checkov"], "--config-file", str(DEPLOY / "checkov.yaml"), "--framework", "dockerfile"]
    for path in DOCKERFILES:
        args += ["-f", str(path)]
    proc = run_tool(args)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(tools, dockerfile):
    proc = run_tool([tools["hadolint"], str(dockerfile)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_passes_on_sources_and_rendered_output(tools, rendered_files):
    proc = run_tool([tools["yamllint"], "--strict", "-c", str(DEPLOY / "yamllint.yaml"), str(DEPLOY),
                     *map(str, rendered_files.values())])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_skipped_check_is_listed_with_its_reason(rendered):
    lines = (DEPLOY / "checkov.yaml").read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if re.match(r"\s*-\s*CKV", line)]
    assert skips, "deploy/checkov.yaml lists no skipped checks: then drop skip-check"
    for i in skips:
        assert lines[i - 1].strip().startswith("#"), f"deploy/checkov.yaml: {lines[i].strip()} has no reason above it"
    annotations = []
    for docs in rendered.values():
        for d in docs:
            for key, value in (d["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    annotations.append((d["metadata"]["name"], check))
                    assert re.fullmatch(r"CKV2?_[A-Z0-9_]+", check), value
                    assert len(reason.strip()) >= 30, f"{d['metadata']['name']}: skip {check} needs a real reason"
    assert annotations  # the per-resource skips are read from the manifests (see deploy/checkov.yaml)


# ---------------------------------------------------------------------------------- structure
def _grpc_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or []}


def _assert_hardened(name: str, spec: dict) -> None:
    psc = spec.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
    assert psc.get("runAsUser", 0) >= 10000, f"{name}: a high numeric UID"
    assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault"
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
        assert ":" in c["image"] and not c["image"].endswith(":latest"), f"{name}: pinned image tag"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_grpc_probes_resources_and_a_security_context(rendered, overlay):
    deployments = by_kind(rendered[overlay], "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, dep in deployments.items():
        spec = pod_spec(dep)
        _assert_hardened(name, spec)
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no API token in service pods"
        port, service = SERVICES[name]
        (container,) = spec["containers"]
        assert _grpc_ports(container)["grpc"] == port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = (container.get(probe) or {}).get("grpc")
            assert grpc == {"port": port, "service": service}, f"{name}: {probe} must be a native gRPC probe"
        grace = spec.get("terminationGracePeriodSeconds", 30)
        env_cm = by_kind(rendered[overlay], "ConfigMap")[container["envFrom"][0]["configMapRef"]["name"]]
        assert float(env_cm["data"]["LEAP_GRACE_SECONDS"]) + 5 < grace, f"{name}: drain must finish before SIGKILL"
        assert env_cm["data"]["LEAP_HOST"] == "0.0.0.0" and int(env_cm["data"]["LEAP_PORT"]) == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_template_and_orchestrator_job_are_hardened_too(rendered, overlay):
    template = by_kind(rendered[overlay], "PodTemplate")["leap-trainer"]
    _assert_hardened("leap-trainer", pod_spec(template))
    assert pod_spec(template)["restartPolicy"] == "Never"
    job = by_kind(rendered["run"], "Job")["leap-run"]
    spec = pod_spec(job)
    _assert_hardened("leap-run", spec)
    assert spec["serviceAccountName"] == "leap-orchestrator"


def test_services_select_their_pods_and_student_is_headless(rendered):
    docs = rendered["gpu"]
    deployments = by_kind(docs, "Deployment")
    for name, svc in by_kind(docs, "Service").items():
        target = next(d for d in deployments.values()
                      if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                             for k, v in svc["spec"]["selector"].items()))
        ports = _grpc_ports(pod_spec(target)["containers"][0])
        for p in svc["spec"]["ports"]:
            assert ports[p["targetPort"]] == p["port"], f"{name}: port {p}"
    assert by_kind(docs, "Service")["leap-student"]["spec"]["clusterIP"] == "None"
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        dep = deployments[pdb["metadata"]["name"]]
        assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["leap-environment"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "leap-environment"}


def test_gpu_overlay_requests_gpus_for_student_and_trainer(rendered, trainer_jobs):
    gpu = rendered["gpu"]
    student = pod_spec(by_kind(gpu, "Deployment")["leap-student"])["containers"][0]
    trainer = pod_spec(by_kind(gpu, "PodTemplate")["leap-trainer"])["containers"][0]
    for name, c in (("student", student), ("trainer", trainer)):
        assert c["resources"]["limits"].get(GPU_RESOURCE) == "1", f"{name} must request a GPU"
        assert c["image"].endswith("-cuda"), f"{name} must use the CUDA image"
    config = by_kind(gpu, "ConfigMap")
    student_cm = next(v for k, v in config.items() if k.startswith("leap-student-config"))
    assert student_cm["data"]["LEAP_DEVICE"] == "cuda"
    job = yaml.safe_load(trainer_jobs["gpu"].read_text())
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "1"
    # And nothing asks for a GPU in the CPU overlay.
    assert GPU_RESOURCE not in trainer_jobs["dev-cpu"].read_text()
    assert GPU_RESOURCE not in yaml.safe_dump_all(rendered["dev-cpu"])
    for name in ("leap-student", "leap-trainer"):
        kind = "Deployment" if name == "leap-student" else "PodTemplate"
        assert pod_spec(by_kind(rendered["dev-cpu"], kind)[name])["containers"][0]["image"].endswith("-cpu")


def test_runs_volume_is_shared_at_the_same_path(rendered):
    gpu = rendered["gpu"]
    assert by_kind(gpu, "PersistentVolumeClaim")["leap-runs"]["spec"]["accessModes"] == ["ReadWriteMany"]
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


def admitted(policies: list[dict], *, src: dict, src_ns: str, dst: dict, port: int, ns: str = "leap") -> bool:
    """Whether NetworkPolicy semantics admit TCP from pod `src` (labels) in `src_ns` to pod `dst` on `port`."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], dst)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress") or []:
            ports_ok = not rule.get("ports") or any(r.get("port") == port for r in rule["ports"])
            peers = rule.get("from")
            from_ok = not peers or any(
                ("ipBlock" in peer)
                or ("namespaceSelector" in peer
                    and _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src_ns})
                    and ("podSelector" not in peer or _selects(peer["podSelector"], src)))
                or ("namespaceSelector" not in peer and "podSelector" in peer and src_ns == ns
                    and _selects(peer["podSelector"], src))
                for peer in peers)
            if ports_ok and from_ok:
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_only_the_teacher_to_the_privileged_port(rendered, overlay):
    docs = rendered[overlay]
    policies = list(by_kind(docs, "NetworkPolicy").values())
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in by_kind(docs, "Deployment").items()}
    labels["leap-trainer"] = by_kind(docs, "PodTemplate")["leap-trainer"]["template"]["metadata"]["labels"]
    labels["leap-run"] = by_kind(rendered["run"], "Job")["leap-run"]["spec"]["template"]["metadata"]["labels"]
    env, teacher = labels["leap-environment"], labels["leap-teacher"]

    assert admitted(policies, src=teacher, src_ns="leap", dst=env, port=PRIVILEGED_PORT)
    for other in ("leap-student", "leap-trainer", "leap-run", "leap-environment"):
        assert not admitted(policies, src=labels[other], src_ns="leap", dst=env, port=PRIVILEGED_PORT), other
    assert not admitted(policies, src={}, src_ns="leap", dst=env, port=PRIVILEGED_PORT)
    for ns in ("monitoring", "default", "kube-system"):
        assert not admitted(policies, src=teacher, src_ns=ns, dst=env, port=PRIVILEGED_PORT), ns
    # The teacher gets nothing else from the environment.
    for port in (50051, 9090):
        assert not admitted(policies, src=teacher, src_ns="leap", dst=env, port=port)
    # The orchestrator reaches the agent-facing ports; unlisted ports stay closed (default deny).
    orchestrator = labels["leap-run"]
    for name, (port, _svc) in SERVICES.items():
        assert admitted(policies, src=orchestrator, src_ns="leap", dst=labels[name], port=port), name
        assert not admitted(policies, src={}, src_ns="default", dst=labels[name], port=port), name
    assert not admitted(policies, src=orchestrator, src_ns="leap", dst=labels["leap-trainer"], port=50081)
    assert admitted(policies, src={}, src_ns="monitoring", dst=labels["leap-student"], port=9090)


def test_the_privileged_token_reaches_only_environment_and_teacher(rendered):
    users = set()
    for docs in rendered.values():
        for d in docs:
            if d["kind"] not in ("Deployment", "Job", "PodTemplate"):
                continue
            spec = pod_spec(d)
            if any((v.get("secret") or {}).get("secretName") == "leap-privileged-token" for v in spec.get("volumes") or []):
                users.add(d["metadata"]["name"])
            assert "leap-privileged-token" not in yaml.safe_dump(spec["containers"][0].get("env") or []), d["metadata"]
    assert users == {"leap-environment", "leap-teacher"}
    teacher_cm = next(v for k, v in by_kind(rendered["gpu"], "ConfigMap").items() if k.startswith("leap-teacher-config"))
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


# ---------------------------------------------------------------------------------- RBAC and run config
def test_orchestrator_role_grants_what_the_platform_code_calls(rendered):
    docs = rendered["gpu"]
    role = by_kind(docs, "Role")["leap-orchestrator"]
    grants = {(group, res, verb) for rule in role["rules"] for group in rule["apiGroups"]
              for res in rule["resources"] for verb in rule["verbs"]}
    needed = {("batch", "jobs", "create"), ("batch", "jobs", "get"), ("batch", "jobs", "watch"),
              ("batch", "jobs", "list"), ("", "pods", "list"), ("", "pods/log", "get"),
              ("", "podtemplates", "get"), ("discovery.k8s.io", "endpointslices", "list"), ("", "endpoints", "get")}
    assert needed <= grants
    assert not any("*" in g for grant in grants for g in grant), "no wildcards"
    assert not any(verb in ("delete", "update", "patch") for _g, _r, verb in grants)
    binding = by_kind(docs, "RoleBinding")["leap-orchestrator"]
    assert binding["roleRef"]["name"] == "leap-orchestrator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "leap-orchestrator", "namespace": "leap"}]


def test_run_config_is_accepted_by_the_orchestrator_and_names_every_service(rendered, tmp_path):
    from orchestrator.config import load_config

    cm = next(d for d in rendered["run"] if d["kind"] == "ConfigMap")
    path = tmp_path / "run.yaml"
    path.write_text(cm["data"]["run.yaml"])
    config = load_config(path)
    assert config.environment.address == "leap-environment:50051"
    assert config.student.address == "dns:///leap-student:50061"
    assert config.teacher.address == "leap-teacher:50071"
    student_cm = next(v for k, v in by_kind(rendered["gpu"], "ConfigMap").items() if k.startswith("leap-student-config"))
    assert config.student.model == student_cm["data"]["LEAP_MODEL"], "the trainer's base model is the student's"
    job = by_kind(rendered["run"], "Job")["leap-run"]
    script = " ".join(pod_spec(job)["containers"][0]["command"])
    assert "--platform kubernetes" in script and "--resume" in script
    assert "/etc/leap/run/run.yaml" in script


def test_checked_in_yaml_matches_what_ci_renders():
    # Overlays reference only files inside deploy/ (a render cannot pick up a stray local file).
    for k in DEPLOY.rglob("kustomization.yaml"):
        data = yaml.safe_load(k.read_text())
        for ref in (data.get("resources") or []) + [p["path"] for p in data.get("patches") or [] if "path" in p]:
            target = (k.parent / ref).resolve()
            assert target.exists() and DEPLOY.resolve() in (target, *target.parents), f"{k}: {ref}"
    assert (ROOT / ".dockerignore").exists()
