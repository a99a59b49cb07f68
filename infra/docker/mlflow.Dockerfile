# syntax=docker/dockerfile:1.7
# The MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3 (MinIO or AWS).
#
#   docker build -f infra/docker/mlflow.Dockerfile -t frontalab-mlflow:3.17.2 infra/docker
#
# Same mlflow pin as pyproject.toml (a test checks it); [auth]: Flask-WTF, for the basic-auth app. httptools makes uvicorn's per-request cost
# ~1-3 ms instead of ~45 ms, which decides whether per-step metric logging is cheap.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "mlflow[auth]==3.17.2" psycopg2-binary==2.9.13 boto3==1.44.5 httptools==0.9.0

RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow
WORKDIR /home/mlflow
ENV HOME=/home/mlflow
USER 10001:10001

EXPOSE 5000
CMD ["mlflow", "server", "--help"]
