#!/bin/sh
# Entrypoint of the local PostgreSQL image, with the official image's settings: on first
# start (an empty $PGDATA) creates a cluster whose superuser is $POSTGRES_USER with the
# password $POSTGRES_PASSWORD, answering every host with that password, and the database
# $POSTGRES_DB; then runs the server in the foreground. Only shell builtins: the image has
# no other programs.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --encoding=UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256
  : > /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" postgres > /dev/null
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
