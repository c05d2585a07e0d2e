#!/usr/bin/env bash
# The ExLlamaV2 GPU check: everything that needs CUDA, in one device call of at most 9 minutes, from a clean GPU
# machine that receives only the checkout (one NVIDIA H200 here: Python 3.12, torch 2.11+cu130, no flash-attn).
#
#   bash bench/gpu_check.sh --prepare    here, once: ../shared/gpu/wheels (the prebuilt exllamav2 0.3.2 for
#                                        cp312/torch 2.11/CUDA 13/sm_90 and the pure-Python wheels the GPU image
#                                        lacks) plus pytest's wheels into .whl/ (ignored by git); carry .whl along
#   OUT=DIR bash bench/gpu_check.sh      on the GPU machine: install .whl/ into a target dir, build the random-weight
#                                        GPTQ checkpoints, run the GPU tests, print the figures (bench/gpu_check.py)
#   bash bench/gpu_check.sh --dry-run    anywhere: everything up to the first CUDA call (tests/bench/test_gpu_check.py)
#
# Every stage is time-boxed so the whole run ends within DEADLINE seconds (default 510); logs go to $OUT.
set -u -o pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--prepare|--dry-run]" >&2; exit 64 ;;
esac
WHL=${CTXQA_WHEELS:-.whl}
PY=${PYTHON:-python3}

if [ "$MODE" = prepare ]; then
  mkdir -p "$WHL" && cp ../shared/gpu/wheels/*.whl "$WHL"/ || { echo "FAIL: no ../shared/gpu/wheels" >&2; exit 3; }
  # pytest may be missing from the GPU image; these are pure-Python wheels.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$WHL" pytest pluggy iniconfig packaging pygments || exit 3
  ls "$WHL"
  exit 0
fi

export OUT=${OUT:-$(mktemp -d)}
WORK=${GPU_CHECK_WORK:-/tmp/ctxqa-gpu-check}
DEADLINE=${DEADLINE:-510}
BENCH_LAYERS=${BENCH_LAYERS:-32}
[ "$MODE" = dry ] && BENCH_LAYERS=${BENCH_LAYERS_DRY:-2}  # the shapes matter here, not 3.9 GB on disk
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
stage() { echo "## +$(( $(date +%s) - T0 ))s $*"; }
cap() {  # seconds for the next stage: at most $1, and never past the deadline
  local left=$(( DEADLINE - ($(date +%s) - T0) ))
  if [ "$left" -lt "$1" ]; then echo $(( left > 5 ? left : 5 )); else echo "$1"; fi
}
fail() { echo "FAIL $*"; exit "${2:-4}"; }

stage "machine"
echo "CPU: $(lscpu | grep 'Model name' | sed 's/.*: *//')"
echo "python: $("$PY" --version 2>&1)"
if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi: no GPU"
fi

stage "install wheels from $WHL"
ls "$WHL"/exllamav2-*.whl >/dev/null 2>&1 || fail "no exllamav2 wheel in $WHL: run bash bench/gpu_check.sh --prepare first" 3
SITE="$WORK/site"
rm -rf "$SITE"
CROSS=()
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$PYVER" != 3.12 ]; then  # the dry run on another Python: install the cp312 wheels for 3.12, to check them
  CROSS=(--python-version 3.12 --implementation cp --abi cp312 --only-binary=:all:
         --platform linux_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${CROSS[@]}" "$WHL"/*.whl \
  || fail "pip could not install $WHL/*.whl" 3
ls -d "$SITE"/*.dist-info | sed 's|.*/||'
# ctxqa without pip: its folders under the one import package `ctxqa`, as setuptools' package-dir maps them.
rm -rf "$WORK/pkg" && mkdir -p "$WORK/pkg/ctxqa"
for f in ctxqa/*; do ln -s "$PWD/$f" "$WORK/pkg/ctxqa/"; done
for d in rag ingest api migrations; do ln -s "$PWD/$d" "$WORK/pkg/ctxqa/$d"; done
# PYTHONSAFEPATH: `python -c` / `-m` would put the checkout (the current directory) first on sys.path, and its
# bare ctxqa/ folder would shadow the mapping.
export PYTHONSAFEPATH=1
if [ "$PYVER" = 3.12 ]; then
  export PYTHONPATH="$SITE:$WORK/pkg:$PWD"
else
  export PYTHONPATH="$WORK/pkg:$PWD"  # the cp312 builds cannot import here; this Python's own packages stand in
fi
# pytest and the checks below must see this mapping, not an installed ctxqa nor the bare ctxqa/ folder of the checkout:
# NOINSTALL drops an editable install's import hook (a dev machine has one; the GPU machine has none), and pytest
# runs with --import-mode=append so the checkout root it adds to sys.path does not come first.
NOINSTALL="import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]"
"$PY" -c "$NOINSTALL
import os, ctxqa, ctxqa.rag.generate.exllamav2, ctxqa.rag.config, torch
assert os.path.dirname(ctxqa.__file__) == '$WORK/pkg/ctxqa', ctxqa.__file__
print('ctxqa importable from', os.path.dirname(ctxqa.__file__), '; torch', torch.__version__)" || fail "ctxqa does not import" 3
pytest_() { "$PY" -c "$NOINSTALL
import pytest; sys.exit(pytest.main(sys.argv[1:]))" -p no:cacheprovider --import-mode=append "$@"; }

stage "prepare checkpoints (CPU)"
timeout "$(cap 150)" "$PY" bench/gpu_check.py prepare "$WORK" --bench-layers "$BENCH_LAYERS" 2>&1 | tee "$OUT/prepare.log" \
  | grep -E '^(PASS|FAIL|INFO)|Error'
[ "${PIPESTATUS[0]}" = 0 ] || fail "building the checkpoints (see prepare.log)"

stage "collect the GPU tests"
pytest_ -q --collect-only tests/rag/generate/test_exllamav2.py 2>&1 | tail -1

if [ "$MODE" = dry ]; then
  echo "DRY RUN: stopping before the first CUDA call (import exllamav2, which loads its CUDA extension)"
  exit 0
fi

stage "import exllamav2"
timeout "$(cap 120)" "$PY" -c "
import time; t = time.time()
import torch, exllamav2, exllamav2.ext as e, exllamav2.attn as a
print('torch', torch.__version__, 'exllamav2', exllamav2.__version__, 'jit build', e.build_jit, 'import %.1fs' % (time.time() - t),
      'flash_attn', a.has_flash_attn, 'paged', a.has_flash_attn_with_paged, 'sdpa', a.has_lower_right_sdpa)
assert not e.build_jit, 'the prebuilt extension did not load: a JIT build would not finish in time'
" 2>&1 | tee "$OUT/import.log" | tail -5
[ "${PIPESTATUS[0]}" = 0 ] || fail "import of exllamav2 (see import.log)"

stage "GPU tests"
export -f pytest_; export PY NOINSTALL
timeout "$(cap 210)" bash -c 'pytest_ -q -rfEs --durations=5 tests/rag/generate/test_exllamav2.py' 2>&1 | tee "$OUT/pytest.log" | tail -25

for s in bench groups rope stream; do
  stage "$s"
  limit=90; [ "$s" = bench ] && limit=170
  timeout "$(cap $limit)" "$PY" bench/gpu_check.py "$s" "$WORK" --bench-layers "$BENCH_LAYERS" 2>&1 | tee "$OUT/$s.log" \
    | grep -E '^(PASS|FAIL|INFO)|Error|error' | tail -20
done

stage "summary"
grep -hE '(passed|failed|error)' "$OUT/pytest.log" | tail -3
grep -hE '^(PASS|FAIL|INFO)' "$OUT"/bench.log "$OUT"/groups.log "$OUT"/rope.log "$OUT"/stream.log 2>/dev/null
