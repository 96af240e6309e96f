#!/bin/bash
# The official postgres image's interface, as the stack uses it: POSTGRES_DB, POSTGRES_USER and
# POSTGRES_PASSWORD initialise an empty PGDATA, with a socket-only server while it initialises;
# then the server listens on *:5432 with scram-sha-256 over TCP.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
user=${POSTGRES_USER:-postgres}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s' "${POSTGRES_PASSWORD:?}" > /tmp/pwfile
  initdb --pgdata="$PGDATA" --username="$user" --pwfile=/tmp/pwfile \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
  if [ "${POSTGRES_DB:-$user}" != postgres ]; then
    createdb --username="$user" "${POSTGRES_DB:-$user}"
  fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
fi
exec "$@" -c listen_addresses='*'
