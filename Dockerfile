# exocall's image: `docker build -t exocall .`, or the compose stack (docker-compose.yml).
# tests/test_deploy.py lints this file with hadolint; tests/test_stack.py builds it on a real
# engine and runs the stack.

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
WORKDIR /app

# The dependencies alone first, exactly as locked (versions and hashes: what CI tested), the
# build backend (setuptools) with them, so that nothing unlocked is fetched: this
# layer is rebuilt only when the lock changes, not on every change to the source. pip's cache is
# a build cache mount, so it speeds up rebuilds without ending up in the image.
COPY requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --require-hashes --no-deps --requirement requirements.txt

# Then the project itself. Editable, so that the package stays next to migrations/ (which
# app/db/migrate.py finds as ../../migrations from the package; a wheel would not hold it). The
# runtime stage copies /app and /opt/venv to the same paths, where the install still points.
COPY pyproject.toml README.md alembic.ini ./
COPY migrations/ migrations/
COPY app/ app/
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps --no-build-isolation --editable .


FROM python:3.11-slim-bookworm AS runtime

# WEB_CONCURRENCY: uvicorn worker processes per container (`exocall serve --workers` reads it).
# One by default: scale with replicas (`docker compose up --scale api=3`); raise it to use more
# cores in one container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPOOL_DIR=/var/lib/exocall/spool \
    RECORDING_STORE=/var/lib/exocall/recordings \
    WEB_CONCURRENCY=1

# A fixed uid/gid, so that volumes and orchestrators (runAsNonRoot) can name it. The spool and
# recordings directories are made and owned here so that a new named volume mounted on one
# inherits the owner.
RUN groupadd --system --gid 10001 exocall \
    && useradd --system --uid 10001 --gid exocall --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin exocall \
    && install --directory --owner=exocall --group=exocall --mode=0750 \
        /var/lib/exocall/spool /var/lib/exocall/recordings

WORKDIR /app
# Owned by root and read-only to the service: it runs as exocall and cannot change its own code.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

USER 10001:10001
# Status callbacks wait in the spool while the database is unreachable, and recordings are kept
# in the other (unless RECORDING_STORE names a bucket): keep both across restarts.
VOLUME ["/var/lib/exocall/spool", "/var/lib/exocall/recordings"]
EXPOSE 8000

# Alive, not ready: /readyz would mark the container unhealthy during a database outage, which
# is exactly when it must go on accepting (spooling) status callbacks. No curl in slim images.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

CMD ["exocall", "serve", "--host", "0.0.0.0", "--port", "8000"]
