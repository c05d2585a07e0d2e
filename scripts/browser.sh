#!/usr/bin/env bash
# The web page's browser test drives Debian's Chromium with Playwright (PyPI, in the dev extra). Playwright's own
# browser download needs the internet; Debian's package comes from the Debian mirror. Installs it when missing.
set -euo pipefail
CHROMIUM=${CTXQA_CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser test (apt-get install chromium)"
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
else
  echo "no Chromium at $CHROMIUM: install Debian's chromium (sudo apt-get install chromium) or set CTXQA_CHROMIUM" >&2
fi
