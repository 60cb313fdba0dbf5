# syntax=docker/dockerfile:1
# Build stage: compile wheels for the project and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-compile .

# Final stage: the virtualenv and the migrations, no compilers, a non-root user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin gateway
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 migrations ./migrations
COPY alembic.ini ./
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["imagegen-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
