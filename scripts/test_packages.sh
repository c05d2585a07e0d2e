#!/usr/bin/env bash
# Debian packages two tests drive, installed when missing (they come from the Debian mirror; nothing else can):
# - chromium: the web page's browser test, driven by Playwright (PyPI, in the dev extra), whose own browser
#   download needs the internet;
# - qemu-user: the emulated-CPU test (tests/rag/embed/test_emulated_cpu.py) runs the embedder's int8 checks on an
#   emulated AVX2-only CPU (qemu-x86_64 -cpu Haswell-v4), the most common x86 class and one a CI machine rarely is.
set -euo pipefail
CHROMIUM=${CTXQA_CHROMIUM:-/usr/bin/chromium}
want=()
[ -x "$CHROMIUM" ] || want+=(chromium)
command -v qemu-x86_64 >/dev/null || want+=(qemu-user)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's ${want[*]} for the tests (apt-get install ${want[*]})"
  apt-get install -y -q "${want[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${want[@]}" >/dev/null; }
else
  echo "missing ${want[*]}: install Debian's packages (sudo apt-get install ${want[*]}); set CTXQA_CHROMIUM for another Chromium" >&2
fi
