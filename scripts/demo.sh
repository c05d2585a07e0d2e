#!/usr/bin/env bash
# The main job on the embedded default: ingest a folder (default: examples/docs), search it, answer a question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${CTXQA_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1
DOCS=${1:-examples/docs}
QUESTION=${2:-How long are backups kept?}
ctxqa ingest "$DOCS"
ctxqa search "$QUESTION" -k 3
ctxqa ask "$QUESTION"
