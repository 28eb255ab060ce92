"""Shared fixtures of the deploy checks: the tools (installed on demand) and the rendered manifests.

The tools live in ./.tools (scripts/install_deploy_tools.sh: PyPI only, its own venv). A fresh CI
machine installs them on first use; if that fails the tests fail, they never skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("LEAP_TOOLS_DIR", ROOT / ".tools"))
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.34.0"
# The cluster versions every overlay must validate against (docs/deploy.md: 1.29 is the minimum);
# the admission-policy component needs 1.30 (ValidatingAdmissionPolicy v1).
KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0")
COMPONENT_VERSIONS = KUBERNETES_VERSIONS[1:]
COMPONENTS = ("admission-policy", "agent-access", "intercode-bash")
TOOL_NAMES = ("kubectl", "kubernetes-validate", "checkov", "hadolint", "yamllint")
# Every kustomization CI renders: the base, each overlay, the run.
KUSTOMIZATIONS = {
    "base": DEPLOY / "base",
    "dev-cpu": DEPLOY / "overlays" / "dev-cpu",
    "gpu": DEPLOY / "overlays" / "gpu",
    "run": DEPLOY / "run",
}
OVERLAYS = ("dev-cpu", "gpu")
DOCKERFILES = sorted(ROOT.glob("Dockerfile.*"))


def run_tool(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false",
               PYTHONWARNINGS="ignore")
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kwargs)


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """Paths of the deploy tools, installing them first when needed (a failure fails the test)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_deploy_tools.sh")], capture_output=True,
                          text=True, cwd=ROOT, timeout=900, env=dict(os.environ, LEAP_TOOLS_DIR=str(TOOLS)))
    if proc.returncode != 0:
        pytest.fail("scripts/install_deploy_tools.sh failed; the deploy checks cannot run:\n"
                    + proc.stdout[-3000:] + proc.stderr[-3000:])
    paths = {}
    for name in TOOL_NAMES:
        path = TOOLS / "bin" / name
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing after scripts/install_deploy_tools.sh")
        paths[name] = str(path)
    return paths


def components_overlay(where: Path) -> Path:
    """A user's overlay as docs/deploy.md shows it: the gpu overlay plus every component."""
    where.mkdir(parents=True, exist_ok=True)
    rel = lambda p: os.path.relpath(p, where)  # noqa: E731 - kustomize wants relative paths
    (where / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel(DEPLOY / "overlays" / "gpu")],
        "components": [rel(DEPLOY / "components" / c) for c in COMPONENTS]}))
    return where


@pytest.fixture(scope="session")
def rendered_files(tools, tmp_path_factory) -> dict[str, Path]:
    """`kubectl kustomize` of every kustomization, written to files (one per kustomization), and of
    the gpu overlay with every component ("components")."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    targets = dict(KUSTOMIZATIONS, components=components_overlay(out / "with-components"))
    for name, path in targets.items():
        proc = run_tool([tools["kubectl"], "kustomize", str(path)])
        assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
        files[name] = out / f"{name}.yaml"
        files[name].write_text(proc.stdout)
    return files


@pytest.fixture(scope="session")
def rendered(rendered_files) -> dict[str, list[dict]]:
    return {name: [d for d in yaml.safe_load_all(path.read_text()) if d] for name, path in rendered_files.items()}


def by_kind(docs: list[dict], kind: str, namespace: str | None = None) -> dict[str, dict]:
    """{name: object} of one kind (of one namespace, when names repeat across namespaces)."""
    found = [d for d in docs if d.get("kind") == kind
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    names = [d["metadata"]["name"] for d in found]
    assert len(names) == len(set(names)), f"{kind} names repeat across namespaces: pass namespace="
    return {d["metadata"]["name"]: d for d in found}


def pod_spec(obj: dict) -> dict:
    """The pod spec of a Deployment, Job or PodTemplate."""
    if obj["kind"] == "PodTemplate":
        return obj["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pytest_collection_modifyitems(items):
    """Tests that use the deploy linters (directly or through the rendered manifests) form a tier of
    their own: `-m "not deploy_tools"` leaves them out."""
    for item in items:
        if {"tools", "rendered_files"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.deploy_tools)
