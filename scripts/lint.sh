#!/usr/bin/env bash
# Lint the product code: ruff (style, imports, the bare-package ban) and mypy. CI runs this before the tests.
# mypy cannot follow setuptools' editable finder (ctxqa.rag lives in rag/, ...), so it checks the package laid out
# as it is installed: a temporary tree of symlinks, ctxqa/ -> ctxqa/*, ctxqa/rag -> rag/, and so on.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ruff check .
farm=$(mktemp -d)
trap 'rm -rf "$farm"' EXIT
mkdir "$farm/ctxqa"
for f in ctxqa/*; do ln -s "$ROOT/$f" "$farm/ctxqa/"; done
for d in rag ingest api migrations; do ln -s "$ROOT/$d" "$farm/ctxqa/$d"; done
cd "$farm"
mypy --config-file "$ROOT/pyproject.toml" -p ctxqa | sed "s#^ctxqa/\(rag\|ingest\|api\|migrations\)/#\1/#"
