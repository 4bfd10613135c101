#!/usr/bin/env bash
# Runs Docker Compose on the project's docker-compose.yml after building the static
# binaries the images wrap (the machine has no registry, so no Rust image to build in).
# Arguments go to Compose: `scripts/compose.sh up --build -d`, `scripts/compose.sh down -v`.
# Uses the Compose v2 plugin when present, else docker-compose v1.
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  case "$arg" in
    up|build|run|create) scripts/build-static.sh >&2; break ;;
  esac
done
if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
else
  exec docker-compose "$@"
fi
