# The prediction service image. The builder stage installs the training extra and trains the models (the
# same command as `make train`); the runtime stage installs only the runtime dependencies and copies the
# trained models, so scikit-learn and skl2onnx never ship.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY stack ./stack
RUN pip install ".[train]"
RUN python -m service train --output /app/models

# The runbook server of docker compose (service `docs`): the repository's Markdown files (mounted at
# /srv/docs) as HTML pages, where the alerts' runbook links lead. Nothing of the service is in it.
FROM ${PYTHON_IMAGE} AS docs
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN pip install "markdown-it-py>=3,<5"
COPY stack/docs_server.py /app/docs_server.py
USER 65534:65534
EXPOSE 9098
CMD ["python", "/app/docs_server.py", "--host", "0.0.0.0", "--port", "9098", "--root", "/srv/docs"]

FROM ${PYTHON_IMAGE} AS runtime
# SERVICE_MULTIPROC_DIR: writable by the unprivileged user (the prediction log's lock file goes beside it).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_MODEL_DIR=/app/models \
    SERVICE_MULTIPROC_DIR=/tmp/service/prometheus-multiproc
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY stack ./stack
RUN pip install . && rm -rf /src
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /var/log/prediction-service && chown app:app /var/log/prediction-service
# (docker-compose.yml mounts a volume there for the prediction log: a new volume takes this owner.)
# Owned by root: the service reads the models and cannot change them.
COPY --from=builder /app/models /app/models
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"]
CMD ["python", "-m", "service", "serve"]
