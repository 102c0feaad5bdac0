# syntax=docker/dockerfile:1
#
# One image for both processes:
#   serving pods (default CMD):  python -m model_serving
#   the operator:                tmctl operator        (manifests/manager sets the command)
#
#   docker build -t ghcr.io/example/tradingmodel-operator:0.1.0 .
#   docker build --build-arg RUNTIME=slim -t ghcr.io/example/tradingmodel-operator:0.1.0-slim .
#
# RUNTIME picks the last stage:
#   compiled (default)  adds gcc and the C library headers. The serving process turns a
#                       model's LightGBM trees into C and compiles them with gcc when it loads
#                       the model (serving/model_serving/engines/codegen/): faster predictions.
#   slim                no compiler (about 200 MB smaller, nothing to compile code with inside
#                       the container, which some image policies require). The serving process
#                       then predicts with LightGBM's own library: same answers, slower per row.
#                       The operator never compiles anything, so slim is enough for it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME=compiled

# --- build: the project wheel and every dependency, installed into a venv --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY operator/ operator/
COPY serving/ serving/
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl

# --- runtime-slim: what both processes need to run ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-slim
# LightGBM's wheel links the system OpenMP runtime (libgomp.so.1) instead of bundling one.
# Unpinned on purpose: the Debian release is pinned by the base image, and its security updates
# should come in with every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot; the manifests use 10001 too.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin app \
 && mkdir -p /var/cache/models \
 && chown app:app /var/cache/models

# --- runtime-compiled: plus a C compiler for the compiled trees ----------------------------------
FROM runtime-slim AS runtime-compiled
# gcc alone does not bring the C library's headers and crt files (libc6-dev is only a
# recommendation of gcc), and the generated code includes <math.h> and links libm.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

# --- final ------------------------------------------------------------------------------------
# A stage of this file, not an image from a registry: there is no tag to pin.
# hadolint ignore=DL3006
FROM runtime-${RUNTIME}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    MODEL_CACHE_DIR=/var/cache/models \
    PORT=8080
USER 10001:10001
EXPOSE 8080
# No HEALTHCHECK: Kubernetes probes /v2/health/live and /v2/health/ready.
CMD ["python", "-m", "model_serving"]
