#!/bin/bash
# PgBouncer in front of DATABASE_HOST:DATABASE_PORT, transaction pooling, one user
# (DATABASE_USER, DATABASE_PASSWORD) authenticated with SCRAM both ways. exocall needs
# DATABASE_PGBOUNCER=true behind it.
set -euo pipefail
config=/tmp/pgbouncer
mkdir -p "$config"
printf '"%s" "%s"\n' "${DATABASE_USER:?}" "${DATABASE_PASSWORD:?}" > "$config/userlist.txt"
cat > "$config/pgbouncer.ini" <<INI
[databases]
* = host=${DATABASE_HOST:-postgres} port=${DATABASE_PORT:-5432}

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $config/userlist.txt
pool_mode = transaction
default_pool_size = ${PGBOUNCER_POOL_SIZE:-20}
max_client_conn = ${PGBOUNCER_MAX_CLIENTS:-1000}
INI
exec pgbouncer "$config/pgbouncer.ini"
