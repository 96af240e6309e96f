#!/usr/bin/env bash
# Stand-ins for the base images the stack names (python:3.11-slim-bookworm, postgres:16-bookworm,
# nginx:1.27-alpine, debian:bookworm-slim), built from Debian's packages, for a machine whose engine can reach Debian's
# archive and PyPI but no image registry (docs/deployment.md). They are stand-ins, not the images
# themselves: Debian's python3 (3.11), PostgreSQL 15 for 16, Debian's nginx 1.22 for Alpine's 1.27.
# An image already present is kept: rerunning costs nothing.
#
#   deploy/standins/build.sh        (needs debootstrap, and DOCKER_HOST if not the default engine)
set -euo pipefail
cd "$(dirname "$0")"
docker=${DOCKER:-docker}
base=exocall-standin/debian:bookworm

have() { "$docker" image inspect "$1" >/dev/null 2>&1; }
rootfs=
trap 'rm -rf "$rootfs" host-ca.crt' EXIT

if ! have "$base"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  tar -C "$rootfs" -c . | "$docker" import - "$base" >/dev/null
fi

# PyPI may be reached through a TLS-intercepting proxy whose CA is in the host's bundle and not in
# Debian's: the python stand-in trusts what the host trusts.
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" host-ca.crt

# debian:bookworm-slim (the PgBouncer profile's base) is the base itself.
have debian:bookworm-slim || "$docker" tag "$base" debian:bookworm-slim

for image in python:3.11-slim-bookworm=python postgres:16-bookworm=postgres nginx:1.27-alpine=nginx; do
  name=${image%=*}
  if ! have "$name"; then
    DOCKER_BUILDKIT=1 "$docker" build --quiet --network host --build-arg "BASE=$base" \
      --file "${image#*=}.Dockerfile" --tag "$name" . >/dev/null
  fi
  echo "$name: $("$docker" image inspect --format '{{.Id}}' "$name")"
done
