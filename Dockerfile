# clipserve's container images, one file, a target each (docs/containers.md):
#   cpu    (the default) the server on ONNX Runtime, no torch
#   torch  adds torch, open_clip and transformers: exports, bf16, checkpoints
#   cuda   onnxruntime-gpu with CUDA and cuDNN from PyPI; needs a GPU (refuses to start without one)
#   jina   the Jina executors, for Flow().add(uses="docker://...")
#
#   docker build -t clipserve:cpu .
#   docker build -t clipserve:gpu --target cuda .
#
# Build arguments:
#   BASE      the base image with Python 3.11 or newer (default python:3.11-slim-bookworm)
#   MODEL     a `clipserve export` directory in the build context (under models/) baked into the
#             image as its default model, for air-gapped deployments
#   PIP_ARGS  extra pip (and uv) options, e.g. "--no-index --find-links /wheels" for offline builds
#   JINA_EXTRAS  the jina image's extras: "jina audio" (docarray v2, the default) or
#             "jina-docarray-v1 audio" (docarray v1: Document, DocumentArray, clip-as-service's client)
ARG BASE=python:3.11-slim-bookworm

# ---- Dependencies first, keyed on pyproject.toml alone: a change to the code reuses these layers.
FROM ${BASE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/container/requirements.py deploy/container/trim-venv.sh ./container/

FROM deps AS deps-cpu
ARG PIP_ARGS=""
RUN python3 container/requirements.py server > requirements.txt \
    && /opt/venv/bin/pip install $PIP_ARGS -r requirements.txt \
    && sh container/trim-venv.sh pip setuptools

FROM deps AS deps-torch
ARG PIP_ARGS=""
RUN python3 container/requirements.py server torch > requirements.txt \
    && /opt/venv/bin/pip install $PIP_ARGS -r requirements.txt \
    && sh container/trim-venv.sh pip setuptools

FROM deps AS deps-cuda
ARG PIP_ARGS=""
RUN python3 container/requirements.py --gpu server > requirements.txt \
    && /opt/venv/bin/pip install $PIP_ARGS -r requirements.txt \
    && sh container/trim-venv.sh pip setuptools

# Jina's pins do not resolve with pip; uv resolves them (with the system's certificates, as pip uses
# them). Jina imports pkg_resources: setuptools stays.
FROM deps AS deps-jina
ARG PIP_ARGS=""
ARG JINA_EXTRAS="jina audio"
RUN python3 container/requirements.py $JINA_EXTRAS > requirements.txt \
    && /opt/venv/bin/pip install $PIP_ARGS 'uv>=0.4' \
    && UV_SYSTEM_CERTS=1 UV_NATIVE_TLS=1 /opt/venv/bin/uv pip install --python /opt/venv/bin/python \
       $PIP_ARGS -r requirements.txt \
    && /opt/venv/bin/pip uninstall --yes uv \
    && sh container/trim-venv.sh pip

# ---- clipserve itself, in a directory of its own: the images add it as one small layer over
# their dependencies, so a new version rebuilds (and downloads) only that layer.
FROM deps AS app
ARG PIP_ARGS=""
COPY README.md ./
COPY clipserve ./clipserve
RUN /opt/venv/bin/pip install $PIP_ARGS --no-deps --target /opt/clipserve/lib .

# ---- What every image runs with: a non-root user, settings from CLIPSERVE_* variables, the cache
# on a volume, nothing written outside it (the root file system may be read-only).
FROM ${BASE} AS runtime
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /cache --shell /usr/sbin/nologin \
        clipserve \
    && mkdir /cache && chown 10001:10001 /cache
ENV PATH=/opt/clipserve/lib/bin:/opt/venv/bin:$PATH PYTHONPATH=/opt/clipserve/lib HOME=/cache \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CLIPSERVE_HOST=0.0.0.0 CLIPSERVE_PORT=51000 CLIPSERVE_CACHE_DIR=/cache
COPY deploy/container/entrypoint.sh deploy/container/healthcheck.py /opt/clipserve/
ARG MODEL=deploy/container/no-model
COPY ${MODEL} /opt/clipserve/model/
VOLUME /cache
EXPOSE 51000
USER 10001:10001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "/opt/clipserve/healthcheck.py"]
ENTRYPOINT ["/opt/clipserve/entrypoint.sh"]
CMD ["serve"]

FROM runtime AS torch
COPY --from=deps-torch /opt/venv /opt/venv
COPY --from=app /opt/clipserve/lib /opt/clipserve/lib

# No silent CPU fallback: device cuda is set, and without a visible GPU the server stops at start.
FROM runtime AS cuda
COPY --from=deps-cuda /opt/venv /opt/venv
COPY --from=app /opt/clipserve/lib /opt/clipserve/lib
ENV CLIPSERVE_DEVICE=cuda

# Jina runs `jina executor` in the container with its own arguments appended (the Hub's layout).
FROM runtime AS jina
COPY --from=deps-jina /opt/venv /opt/venv
COPY --from=app /opt/clipserve/lib /opt/clipserve/lib
COPY deploy/container/jina.yml /opt/clipserve/
HEALTHCHECK NONE
ENTRYPOINT ["jina", "executor", "--uses", "/opt/clipserve/jina.yml"]
CMD []

FROM runtime AS cpu
COPY --from=deps-cpu /opt/venv /opt/venv
COPY --from=app /opt/clipserve/lib /opt/clipserve/lib
