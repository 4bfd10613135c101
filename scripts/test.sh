#!/usr/bin/env bash
# The test command README.md gives: installs what the tests need when it is missing, then
# runs `cargo test --workspace` (extra arguments are passed on to it) and prints the fault
# and compose summaries. Meant for a Debian bookworm machine with the Rust toolchain and a
# running Docker engine; installing packages needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests use from Debian, and how to tell it is there:
# - chromium: the status page test loads the page in a real headless browser;
# - postgresql-15: the PostgreSQL store tests start throwaway servers with its initdb.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)

if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: ${missing[*]} missing; run as root to install, or install by hand" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own servers; keep the package from starting the system service.
  policy=/usr/sbin/policy-rc.d
  restore_policy=""
  if [ -e "$policy" ]; then
    restore_policy=$(mktemp)
    cp -p "$policy" "$restore_policy"
  fi
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'if [ -n "$restore_policy" ]; then mv "$restore_policy" "$policy"; else rm -f "$policy"; fi' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The fault and compose tests append their summary lines here; cargo hides passing tests'
# output.
summary=target/test-artifacts/summary.txt
rm -f "$summary"

echo "== cargo test --workspace $*"
cargo test --workspace "$@"

if [ -f "$summary" ]; then
  echo "== summaries (fault classes, compose steps)"
  cat "$summary"
fi
