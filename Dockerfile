# Moltbot container image: one Dockerfile, two variants (build with `make image`, see mk/image.mk).
#   VARIANT=cpu  ONNX Runtime for the CPU, no CUDA at all                 (make image             -> moltbot:latest)
#   VARIANT=gpu  onnxruntime-gpu with the CUDA 13 and cuDNN 9 libraries    (make image VARIANT=gpu -> moltbot:gpu)
#                from PyPI's nvidia-* wheels; run it with `docker run --gpus all` (NVIDIA Container Toolkit).
# BASE_IMAGE: a Debian image with apt whose python3 meets pyproject's requires-python: Debian 12 (bookworm, 3.11,
# the Python the project is developed and tested with) by default; Debian 13 (trixie, 3.13) works too. `make image`
# builds an equivalent one with debootstrap where it can't be pulled.
# Build context: the repository plus two folders `make image` prepares:
#   build/image-defaults  the embedded default models (smollm2-135m-instruct's serving graph made from its GGUF,
#                         all-minilm-l6-v2) and their manifest, staged by scripts/image-build.sh from the folder
#                         `moltbot models defaults` made on the build host with the project's venv and the model
#                         builder's (they need torch, which a docker build can only get from PyPI as a CUDA build
#                         of several GB);
#   build/image-ca        extra CA certificates the build host trusts (TLS-intercepting proxies); used by pip in the
#                         build stages only, never copied into the final image. Usually empty.
# The final image carries the serving path only: no torch, transformers or optimum, no pip, no compilers.
# The service uid, ports, in-container paths and the gpu variant's CUDA major version come from deploy/contract.json:
# scripts/image-build.sh passes them as build arguments; the defaults below are copies that
# tests/test_deploy_contract.py keeps equal to it.

ARG BASE_IMAGE=debian:bookworm-slim
ARG VARIANT=cpu
ARG CUDA_MAJOR=13

FROM ${BASE_IMAGE} AS python-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# Dependencies first (they change rarely), in a venv that has no pip of its own: pip and the build tools live
# in /opt/build-tools and install into it with --python.
FROM python-base AS deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY build/image-ca/ /usr/local/share/ca-certificates/build-host/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DEFAULT_TIMEOUT=120
RUN python3 -m venv /opt/build-tools \
 && /opt/build-tools/bin/pip install -q "pip>=24" "setuptools>=69" wheel \
 && python3 -m venv --without-pip /opt/moltbot/venv
COPY pyproject.toml /src/pyproject.toml
# The runtime's dependencies from pyproject.toml: first those both variants share (one cached layer for both),
# then the variant's ONNX Runtime; the gpu variant adds the onnxruntime-gpu extras that pull the CUDA and cuDNN
# wheels (the version stays the one pyproject pins).
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      >/tmp/requirements.txt \
 && /opt/build-tools/bin/pip --python /opt/moltbot/venv/bin/python install -q -r /tmp/requirements.txt
ARG VARIANT
RUN case "$VARIANT" in \
      cpu) variant_packages="" ;; \
      gpu) variant_packages="onnxruntime-gpu[cuda,cudnn]" ;; \
      *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["optional-dependencies"][sys.argv[1]]))' \
      "$VARIANT" >/tmp/requirements-variant.txt \
 && /opt/build-tools/bin/pip --python /opt/moltbot/venv/bin/python install -q -r /tmp/requirements.txt \
      -r /tmp/requirements-variant.txt $variant_packages \
 && for module in torch transformers optimum; do \
      if /opt/moltbot/venv/bin/python -c "import $module" 2>/dev/null; then \
        echo "$module got into the serving environment" >&2; exit 1; \
      fi; \
    done
ARG CUDA_MAJOR
# The gpu variant's CUDA runtime must be the major version the deployments check the host's driver against.
RUN if [ "$VARIANT" = gpu ]; then \
      cuda_version="$(/opt/moltbot/venv/bin/python -c 'import importlib.metadata as md; print(md.version("nvidia-cuda-runtime"))')" \
      && [ "${cuda_version%%.*}" = "$CUDA_MAJOR" ] \
      || { echo "the gpu variant's CUDA runtime is ${cuda_version:-missing}, deploy/contract.json says CUDA $CUDA_MAJOR" >&2; exit 1; }; \
    fi

# The moltbot package itself (changes often): its installed files are staged under /staging so that the final
# image gets them as one small layer on top of the dependencies.
FROM deps AS app
COPY README.md /src/README.md
COPY runtime /src/runtime
RUN /opt/build-tools/bin/pip wheel -q --no-deps --no-build-isolation -w /tmp/wheels /src \
 && /opt/build-tools/bin/pip --python /opt/moltbot/venv/bin/python install -q --no-deps /tmp/wheels/moltbot-*.whl \
 && /opt/moltbot/venv/bin/python -c 'import importlib.metadata as md, os; print("\n".join(os.path.realpath(f.locate()).lstrip("/") for f in md.distribution("moltbot").files))' \
      >/tmp/moltbot-files \
 && mkdir /staging \
 && tar -C / -cf - -T /tmp/moltbot-files | tar -C /staging -xf -

# Per-variant settings.
FROM python-base AS runtime-cpu
ENV MOLTBOT_DEVICE=cpu
FROM python-base AS runtime-gpu
ENV MOLTBOT_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM runtime-${VARIANT}
ARG MOLTBOT_UID=10001
ARG MOLTBOT_GID=10001
ARG MOLTBOT_HTTP_PORT=8080
ARG MOLTBOT_HTTPS_PORT=8443
ARG MODELS_DIR=/app/models
ARG PLUGINS_DIR=/app/plugins
ARG LOGS_DIR=/app/logs
ARG DEFAULTS_DIR=/opt/moltbot/defaults
RUN groupadd --gid "$MOLTBOT_GID" moltbot \
 && useradd --uid "$MOLTBOT_UID" --gid "$MOLTBOT_GID" --no-log-init --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin moltbot \
 && mkdir -p "$MODELS_DIR" "$PLUGINS_DIR" "$LOGS_DIR" \
 && chown moltbot:moltbot /app "$MODELS_DIR" "$PLUGINS_DIR" "$LOGS_DIR"
# The folders are the three volumes. The cache folder (plugin data among others) and the state folder (stored
# responses) live in the models volume, so that they survive the container and work with --read-only. Draining
# after SIGTERM is kept under `docker stop`'s default 10 s grace; raise both (--stop-timeout,
# MOLTBOT_SHUTDOWN_TIMEOUT) for long requests.
# ORT_DISABLE_TELEMETRY: PyPI's ONNX Runtime wheels (1.31 on) otherwise keep a device ID under ~/.cache and send
# usage events to Microsoft's collector; a self-hosted service sends nothing anywhere.
ENV PATH=/opt/moltbot/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    MOLTBOT_HOST=0.0.0.0 \
    MOLTBOT_PORT=${MOLTBOT_HTTP_PORT} \
    MOLTBOT_HTTPS_PORT=${MOLTBOT_HTTPS_PORT} \
    MOLTBOT_MODELS_DIR=${MODELS_DIR} \
    MOLTBOT_PLUGINS_DIR=${PLUGINS_DIR} \
    MOLTBOT_LOGS_DIR=${LOGS_DIR} \
    MOLTBOT_DEFAULTS_DIR=${DEFAULTS_DIR} \
    MOLTBOT_CACHE_DIR=${MODELS_DIR}/.cache \
    MOLTBOT_DATA_DIR=${MODELS_DIR}/.state \
    MOLTBOT_SHUTDOWN_TIMEOUT=8
COPY build/image-defaults/ ${DEFAULTS_DIR}/
COPY --from=deps /opt/moltbot/venv /opt/moltbot/venv
ARG VARIANT
# The gpu variant: make the CUDA and cuDNN libraries from the nvidia-* wheels known to the dynamic loader.
RUN nvidia_libs="$(find /opt/moltbot/venv/lib/python3*/site-packages/nvidia -mindepth 2 -maxdepth 2 -type d -name lib 2>/dev/null || true)" \
 && if [ "$VARIANT" = gpu ]; then \
      [ -n "$nvidia_libs" ] || { echo "the gpu variant has no CUDA libraries" >&2; exit 1; }; \
      echo "$nvidia_libs" >/etc/ld.so.conf.d/moltbot-nvidia.conf && ldconfig; \
    elif [ -n "$nvidia_libs" ]; then \
      echo "the cpu variant must not carry CUDA libraries: $nvidia_libs" >&2; exit 1; \
    fi
COPY --from=app /staging/ /
COPY scripts/image-entrypoint.sh /usr/local/bin/moltbot-entrypoint
WORKDIR /app
VOLUME ["${MODELS_DIR}", "${PLUGINS_DIR}", "${LOGS_DIR}"]
EXPOSE ${MOLTBOT_HTTP_PORT} ${MOLTBOT_HTTPS_PORT}
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/moltbot/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['MOLTBOT_PORT'], timeout=4)"]
# The entrypoint starts as root only to hand root-owned logs/models volume folders (`mkdir -p` on the host) to the
# service user, then runs tini as that user (MOLTBOT_UID); with `--user` it just runs tini. tini (Debian's) is PID 1:
# it reaps orphaned processes (what a killed plugin worker left behind would otherwise be zombies against the pids
# limit) and passes signals on to the service; nothing in the container runs as root once the service starts.
ENTRYPOINT ["/usr/local/bin/moltbot-entrypoint"]
CMD ["moltbot", "serve"]
