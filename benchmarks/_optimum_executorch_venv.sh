#!/usr/bin/env bash
# Build the separate virtual environment that holds Optimum's ExecuTorch exporter.
#
# optimum-executorch pins transformers==5.0.0rc1, which conflicts with edge-export's
# transformers, so it lives outside the repo (default /work/bench-venvs/optimum-executorch;
# override with $1 or OPTIMUM_EXECUTORCH_VENV). torch==2.13.0 is installed FIRST from the local
# wheel: a bare `torch` requirement would make pip resolve a ~5 GB CUDA build. executorch is
# pinned to 1.5.1 (built against torch 2.13) and torchao to the project's 0.18.0, so both tools
# lower with the same ExecuTorch and quantization code.
set -euo pipefail

VENV="${1:-${OPTIMUM_EXECUTORCH_VENV:-/work/bench-venvs/optimum-executorch}}"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"
EXECUTORCH="executorch==1.5.1"
TORCHAO="torchao==0.18.0"

if [[ -x "$VENV/bin/optimum-cli" ]] && "$VENV/bin/optimum-cli" export executorch --help >/dev/null 2>&1; then
    echo "optimum-executorch venv already present: $VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install "$TORCH"
# torch is pinned again in every later step so the resolver keeps the CPU build it already has.
"$VENV/bin/pip" install "$TORCH" "$EXECUTORCH" "$TORCHAO"
"$VENV/bin/pip" install "$TORCH" "$EXECUTORCH" "$TORCHAO" "optimum-executorch" "accelerate"
"$VENV/bin/optimum-cli" export executorch --help >/dev/null
"$VENV/bin/python" -c "import torch, executorch, transformers, optimum.executorch as o; \
print('torch', torch.__version__, '| transformers', transformers.__version__)"
"$VENV/bin/pip" show executorch optimum-executorch | grep -E '^(Name|Version)'
echo "optimum-executorch venv ready: $VENV"
