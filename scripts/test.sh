#!/usr/bin/env bash
# Set up (with the dev extra), lint (ruff + mypy, scripts/lint.sh) and run the whole test suite. Needs ../shared
# beside the checkout for the tests over real documents, and PostgreSQL at 127.0.0.1:5432 for the PostgreSQL
# variants (skipped with the reason if absent; under CI=true they fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."
CTXQA_EXTRAS=${CTXQA_EXTRAS:-gguf,postgres,dev} bash scripts/setup.sh
# shellcheck disable=SC1091
. "${CTXQA_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/test_packages.sh
bash scripts/lint.sh
python -m pytest -q "$@"
