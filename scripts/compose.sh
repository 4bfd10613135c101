#!/usr/bin/env bash
# Runs Docker Compose on the project's compose files with the images made from binaries
# built on the host (docker-compose.prebuilt.yml), for machines with no registry to pull
# the Rust image from: `scripts/compose.sh up --build -d`, `scripts/compose.sh down -v`.
# Arguments go to Compose; commands that build first run scripts/build-static.sh.
# The files are COMPOSE_FILE's (default docker-compose.yml) plus docker-compose.prebuilt.yml;
# a first argument `--postgres` adds docker-compose.postgres.yml (the store in PostgreSQL)
# with the postgres image built from the host's PostgreSQL 15 (docker-compose.postgres-local.yml).
# Uses the Compose v2 plugin when present, else docker-compose v1.
set -euo pipefail
cd "$(dirname "$0")/.."
files="${COMPOSE_FILE:-docker-compose.yml}"
postgres=
if [[ "${1:-}" == --postgres ]]; then
  postgres=1
  files+=":docker-compose.postgres.yml:docker-compose.postgres-local.yml"
  shift
fi
export COMPOSE_FILE="$files:docker-compose.prebuilt.yml"
for arg in "$@"; do
  case "$arg" in
    up|build|run|create)
      scripts/build-static.sh >&2
      if [[ -n "$postgres" ]]; then docker/postgres/build-rootfs.sh >&2; fi
      break ;;
  esac
done
if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
else
  exec docker-compose "$@"
fi
