#!/usr/bin/env bash
# Builds node, balancer and generator as statically linked, stripped binaries and puts them
# in docker/dist/, where docker/Dockerfile picks them up. Static glibc (crt-static) lets
# them run in an empty image; --target keeps the flag off build scripts and proc macros.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile dist --target "$target" -p node -p balancer -p generator
mkdir -p docker/dist
for bin in node balancer generator; do
  cp "target/$target/dist/$bin" "docker/dist/$bin"
done
ls -l docker/dist
