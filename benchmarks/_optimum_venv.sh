#!/usr/bin/env bash
# Build the separate virtual environment that holds Optimum's ONNX exporter.
#
# optimum-onnx needs transformers<4.58, which conflicts with edge-export's transformers 5.x,
# so it lives outside the repo (default /work/bench-venvs/optimum; override with $1 or
# OPTIMUM_VENV). torch==2.13.0 is installed FIRST from the local wheel: a bare `torch`
# requirement would make pip resolve a ~5 GB CUDA build.
set -euo pipefail

VENV="${1:-${OPTIMUM_VENV:-/work/bench-venvs/optimum}}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$VENV/bin/optimum-cli" ]]; then
    echo "optimum venv already present: $VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install "torch==2.13.0"
# torch is pinned again so the resolver keeps the CPU build it already has. accelerate enables
# Optimum's tied-weight deduplication check (SmolLM2 ties its embedding and LM head).
"$VENV/bin/pip" install "torch==2.13.0" "optimum-onnx[onnxruntime]" "transformers<4.58" \
    "onnxruntime" "onnx" "accelerate"
"$VENV/bin/optimum-cli" export onnx --help >/dev/null
echo "optimum venv ready: $VENV"
