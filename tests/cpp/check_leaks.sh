#!/usr/bin/env bash
# Runs the C++ tests under AddressSanitizer + LeakSanitizer and fails on any
# error, and on any leak whose allocation stack passes through lazyinit.
# (LibTorch's own static initializers leave a few bytes behind; a module-wide
# suppression of libtorch would also hide leaks of kernels it dispatches to.)
set -uo pipefail
binary="$1"
log="$(mktemp)"
ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=exitcode=0 "$binary" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  echo "check_leaks: tests or AddressSanitizer failed (exit $status)"
  exit "$status"
fi
# Frames #1 and up of every leak report (frame #0 is the allocator itself).
ours=$(awk '/leak of/ {inleak=1; next} /^$/ {inleak=0} inleak && /#[1-9][0-9]* / && /lazyinit/' "$log")
if [ -n "$ours" ]; then
  echo "check_leaks: memory leaked from lazyinit code:"
  echo "$ours"
  exit 1
fi
echo "check_leaks: no leak from lazyinit code ($(grep -c 'leak of' "$log") leak report(s) from LibTorch itself)"
