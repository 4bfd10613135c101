#!/usr/bin/env bash
# Builds docker/postgres/dist/rootfs.tar: Debian's PostgreSQL 15 server as installed on this
# host (/usr/lib/postgresql/15, package postgresql-15), the shared libraries it loads, its
# share files, the time zone data, a shell for initdb and the entrypoint, and a `postgres`
# user. docker/postgres/Dockerfile unpacks it into an empty image, so the PostgreSQL option
# of Compose runs on machines that cannot pull the official `postgres` image.
set -euo pipefail
cd "$(dirname "$0")"
pg=/usr/lib/postgresql/15
[[ -x "$pg/bin/postgres" ]] || { echo "needs Debian's postgresql-15 installed" >&2; exit 1; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# A file copied to the same path under the root, with its directories.
put() { mkdir -p "$root$(dirname "$1")" && cp -aL "$1" "$root$1"; }

elves=("$pg/bin/postgres" "$pg/bin/initdb" "$pg/bin/pg_isready" /bin/sh)
# The modules initdb and a plain server load (PL/pgSQL, the text search dictionaries); not
# the LLVM JIT, which alone would pull in 100 MB (without it the server does not JIT).
for lib in plpgsql dict_snowball; do elves+=("$pg/lib/$lib.so"); done
for file in "${elves[@]}"; do put "$file"; done
# Every shared library any of them loads, and the dynamic loader.
for file in "${elves[@]}"; do
  ldd "$file" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | sort -u | while read -r lib; do put "$lib"; done
cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/" 2>/dev/null \
  || { mkdir -p "$root/usr/share/postgresql" && cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"; }
mkdir -p "$root/usr/share" && cp -a /usr/share/zoneinfo "$root/usr/share/"

mkdir -p "$root/etc" "$root/tmp" "$root/var/run/postgresql" "$root/var/lib/postgresql/data"
printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' \
  > "$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' > "$root/etc/group"
cp entrypoint.sh "$root/docker-entrypoint.sh"
chmod 755 "$root/docker-entrypoint.sh"
chmod 1777 "$root/tmp"
chown -R 999:999 "$root/var/run/postgresql" "$root/var/lib/postgresql"
chmod 700 "$root/var/lib/postgresql/data"

mkdir -p dist
tar -C "$root" --numeric-owner -cf dist/rootfs.tar .
ls -l dist/rootfs.tar
