# syntax=docker/dockerfile:1
#
# Two images from one build, named once in the `images:` of the kustomization you apply:
#   docker build --target operator -t REGISTRY/tradingmodel-operator:TAG .   tmctl operator
#   docker build --target serving  -t REGISTRY/tradingmodel-serving:TAG  .   python -m model_serving
#   docker build --target serving-slim ...                                   serving without a compiler
#
#   serving       adds gcc and the C library headers: the serving process turns a model's LightGBM
#                 trees into C and compiles them with gcc when it loads the model
#                 (serving/model_serving/engines/gcc_build.py): faster predictions.
#   serving-slim  no compiler (about 200 MB smaller; some image policies forbid one). The serving
#                 process then predicts with LightGBM's own library: same answers, slower per row.
#   operator      no compiler: the operator never compiles anything.
#
# Reproducible: the base image is pinned by digest, and every Python dependency comes from
# requirements.lock with its sha256 (pip --require-hashes); the project's own wheel is built here.
# Regenerate the locks after changing dependencies in pyproject.toml (pip-tools):
#   pip-compile --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
#     --no-emit-find-links -o requirements.lock pyproject.toml
#   pip-compile --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
#     --all-build-deps --only-build-deps -o requirements-build.lock pyproject.toml

# python:3.11.10-slim-bookworm (Debian 12). Renovate or Dependabot can move the digest.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

# --- build: the locked dependencies and the project wheel, installed into a venv ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
# /opt/build holds the build backend (setuptools, locked too); /opt/venv what the processes run.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements-build.lock \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY serving/ serving/
# --no-deps: everything it needs came from the lock above; `pip check` proves nothing is missing.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip check

# --- app: what both processes need to run ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS app
# LightGBM's wheel links the system OpenMP runtime (libgomp.so.1) instead of bundling one.
# Unpinned on purpose: the Debian release is pinned by the base image digest, and its security
# updates should come in with every rebuild.
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
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    MODEL_CACHE_DIR=/var/cache/models \
    PORT=8080
USER 10001:10001

# --- operator -------------------------------------------------------------------------------------
FROM app AS operator
EXPOSE 8080
# No HEALTHCHECK: Kubernetes probes kopf's /healthz (manifests/manager).
CMD ["tmctl", "operator", "--liveness=http://0.0.0.0:8080/healthz"]

# --- serving-slim ---------------------------------------------------------------------------------
FROM app AS serving-slim
EXPOSE 8080
# No HEALTHCHECK: Kubernetes probes /v2/health/live and /v2/health/ready.
CMD ["python", "-m", "model_serving"]

# --- serving (the default target): plus a C compiler for the compiled trees ------------------------
FROM serving-slim AS serving
USER 0:0
# gcc alone does not bring the C library's headers and crt files (libc6-dev is only a
# recommendation of gcc), and the generated code includes <math.h> and links libm.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
