# syntax=docker/dockerfile:1
# imagegen-gateway: API (`serve`, the default command), `worker` and `migrate` in one image.
#
#   podman build -t imagegen-gateway:dev .        (or docker build; scripts/container-build)
#
# BASE_IMAGE must provide CPython 3.11 with venv and pip (python:3.11-slim does). Where no
# registry is reachable, scripts/container-build passes a locally imported Debian bookworm with
# python3 instead. Dependencies come only from requirements.lock (exact versions with sha256
# hashes, binary wheels only), so neither stage needs a compiler.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---- build: a virtualenv with the locked dependencies and the project's wheel ------------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
WORKDIR /src
RUN python3 -m venv /opt/venv && python3 -m venv /opt/build-tools
COPY requirements.lock requirements-build.lock ./
RUN /opt/build-tools/bin/pip install --require-hashes --only-binary=:all: --no-deps \
        -r requirements-build.lock \
    && /opt/venv/bin/pip install --require-hashes --only-binary=:all: --no-deps \
        -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
# The Alembic scripts: the wheel ships them inside the package (app._migrations).
COPY migrations ./migrations
# The project itself: a wheel built offline with the pinned backend, installed without
# dependencies (they are all in the lock), then the installers are removed from the runtime venv.
RUN /opt/build-tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-deps /tmp/wheels/imagegen_gateway-*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---- runtime: the virtualenv (migrations included), a non-root user, nothing else ---------
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="imagegen-gateway" \
      org.opencontainers.image.description="Gateway in front of EvoLink's gpt-image-1.5 API"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# uid/gid 10001: numeric, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv --no-create-home \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /srv/var \
    && chown 10001:10001 /srv/var
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
# /srv/var (the SQLite and file-store defaults) is the one writable path the image prepares; with
# a read-only root filesystem, point IMAGEGEN_DATABASE_URL/IMAGEGEN_STORAGE_URL at a mount.
# The API's liveness (Kubernetes ignores HEALTHCHECK and uses its probes; compose overrides it
# for the worker, which serves only metrics).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["imagegen-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
