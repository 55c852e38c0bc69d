# Images of the gateway and the model server, from one Dockerfile:
#
#   docker build --target gateway           -t sd-gateway/gateway:dev .
#   docker build --target backend           -t sd-gateway/backend:dev .           # sim engine
#   docker build --target backend-diffusers -t sd-gateway/backend-diffusers:dev .  # CPU torch
#
# Always name a --target: the last stage (backend-diffusers) installs torch. The diffusers
# stages come last so that even the legacy builder, which builds every stage before the
# target, never builds them for the gateway or the sim backend.
#
# BASE_IMAGE must be a Debian-like image with Python >= 3.11, `python3 -m venv`, `useradd`
# and `sleep` (the Kubernetes preStop hook). Where no image registry is reachable, build such
# an image locally and pass `--build-arg BASE_IMAGE=...` (the compose file and the compose
# smoke test read the BASE_IMAGE environment variable). Every stage that runs code starts
# from BASE_IMAGE, so the virtual environment copied between stages finds the same Python.
ARG BASE_IMAGE=python:3.11-slim

# --- builder: the project's wheel and its dependencies' wheels, installed into /opt/venv -----
FROM ${BASE_IMAGE} AS builder
# VENV_ARGS=--system-site-packages lets the venv see a framework the base image already has
# (e.g. torch-neuronx in a Neuron SDK base image for the inf2 pool).
ARG VENV_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from: a change to tests or docs does not rebuild the image.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY backends ./backends
COPY loadtest ./loadtest
RUN python3 -m pip wheel --wheel-dir /wheels . \
 && python3 -m venv ${VENV_ARGS} /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels sd-gateway \
 && /opt/venv/bin/sd-gateway --help >/dev/null \
 && /opt/venv/bin/sd-backend profiles >/dev/null

# --- runtime-base: a non-root user and the health check, nothing from the build ---------------
FROM ${BASE_IMAGE} AS runtime-base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 sd \
 && useradd --system --uid 10001 --gid sd --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sd
WORKDIR /opt/sd
USER 10001:10001
# Exec form, no shell: the URL comes from the environment so an overridden port still works.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]

# --- runtime: the installed project (root-owned, read-only to the user) -----------------------
FROM runtime-base AS runtime
COPY --from=builder /opt/venv /opt/venv

# --- backend: the model server (simulated engine unless told otherwise) ----------------------
FROM runtime AS backend
ENV HEALTHCHECK_URL=http://127.0.0.1:8000/health
EXPOSE 8000
ENTRYPOINT ["sd-backend"]
CMD ["serve", "--engine", "sim", "--host", "0.0.0.0", "--port", "8000"]

# --- gateway ---------------------------------------------------------------------------------
FROM runtime AS gateway
ENV HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
EXPOSE 8080
ENTRYPOINT ["sd-gateway"]
CMD ["serve", "--config", "/etc/sd-gateway/gateway.yaml"]

# --- backend-diffusers: the model server with torch and diffusers ----------------------------
FROM builder AS diffusers-builder
# The CPU build of torch by default; an empty TORCH_INDEX_URL takes the default index (CUDA).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT=torch
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
      /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_REQUIREMENT}"; \
    else \
      /opt/venv/bin/pip install "${TORCH_REQUIREMENT}"; \
    fi \
 && /opt/venv/bin/pip install --find-links /wheels "sd-gateway[diffusers]"

FROM runtime-base AS backend-diffusers
COPY --from=diffusers-builder /opt/venv /opt/venv
# Model weights are mounted, never downloaded at run time.
ENV HEALTHCHECK_URL=http://127.0.0.1:8000/health \
    HF_HUB_OFFLINE=1
EXPOSE 8000
ENTRYPOINT ["sd-backend"]
CMD ["serve", "--engine", "diffusers", "--profile", "cpu", "--host", "0.0.0.0", "--port", "8000", "--model", "/models/sd"]
