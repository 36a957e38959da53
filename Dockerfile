# numpy-nets model server: gunicorn + Flask serving the shipped NumPy models.
#
#   docker build -t numpy-nets .                      # the server (default target)
#   docker build --build-arg LOCK=requirements-tracing.lock -t numpy-nets .   # plus OpenTelemetry tracing
#   docker build --target train -t numpy-nets-train . # plus the training CLI and its extras
#
# PYTHON_IMAGE lets machines without a registry build on a local base with the same layout.
ARG PYTHON_IMAGE=python:3.12-slim

# ---- build: a virtual environment from the hash-pinned lock file, then the project itself ----
FROM ${PYTHON_IMAGE} AS build
# The runtime lock; requirements-tracing.lock adds OpenTelemetry (docs/tracing.md: 10 MB the default image saves)
ARG LOCK=requirements.lock
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock requirements-tracing.lock requirements-build.lock ./
# gunicorn-h1c (gunicorn's C request parser) is published as source only: it is compiled here, and
# the compiler stays in this stage (the runtime stages below have none). Unpinned: the two bases (python:3.12-slim,
# the local bookworm one) carry different Debian releases, and nothing of these packages ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && (python -c "import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_path('include') + '/Python.h'))" \
        || apt-get install -y --no-install-recommends python3-dev) \
    && rm -rf /var/lib/apt/lists/*
# /opt/venv is what ships; /opt/build only holds the pinned build backend that makes our wheel.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: --no-binary=gunicorn-h1c \
       -r "$LOCK" \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements-build.lock
COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY service ./service
# The shipped venv needs no installer: pip and setuptools (25 MB) leave it once our wheel is in.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools
# What only a build or a developer uses leaves the shipped venv too (35 MB; bench/footprint.py measures
# it, docs/operations.md#footprint): the packages' test suites, C headers, sources and static libraries,
# type stubs, numpy's build tools (f2py, distutils) and the bytecode pip compiled for every module, most
# never imported. (The shared libraries are not stripped: 3 MB, and strip breaks the wheels' patched
# ones, numpy's OpenBLAS among them: "ELF load command address/offset not page-aligned". pysimdjson's
# one is the exception: it ships its debug symbols, 7.5 MB of which strip leaves 0.6; the import below
# checks it still loads.)
# Bytecode is then written once, here, for what the server's processes import (the read-only root file
# system and PYTHONDONTWRITEBYTECODE keep them from writing it); anything else compiles on import.
RUN find /opt/venv -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
    && for d in gevent/testing numpy/f2py numpy/distutils numpy/_pyinstaller numpy/random/_examples; do \
       rm -rf /opt/venv/lib/python3*/site-packages/"$d"; done \
    && find /opt/venv -type f \( -name '*.pyi' -o -name '*.pxd' -o -name '*.pyx' -o -name '*.h' -o -name '*.c' \
       -o -name '*.hpp' -o -name '*.cpp' -o -name '*.a' \) -delete \
    && strip --strip-unneeded /opt/venv/lib/python3*/site-packages/csimdjson*.so \
    && mkdir /tmp/no-models \
    && MODEL_DIR=/tmp/no-models PYTHONDONTWRITEBYTECODE='' /opt/venv/bin/python -c "import service.wsgi, \
       service.grpc.server, service.supervisor, service.http_server.gunicorn_conf, service.http_server.worker, \
       gunicorn.app.wsgiapp, gunicorn.arbiter, gunicorn.workers.ggevent, gevent.monkey, simdjson; \
       assert simdjson.Parser().parse(b'[[0.5, 1]]').as_list() == [[0.5, 1]]"

# ---- build-train: the same environment plus tqdm and matplotlib ----
FROM build AS build-train
COPY requirements-train.lock ./
RUN /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes --only-binary=:all: \
    --no-binary=gunicorn-h1c -r requirements-train.lock

# ---- common runtime layout: no compilers, no pip cache, an unprivileged user ----
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/srv/model_repository \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    HOME=/tmp
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
WORKDIR /srv

# ---- train: retrain inside a container, e.g. with -v $PWD/model_repository:/srv/model_repository ----
FROM base AS train
COPY --from=build-train /opt/venv /opt/venv
COPY --chown=app:app model_repository /srv/model_repository
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---- runtime (default): the server ----
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
# Weights are read-only data for the server: owned by root, readable by the app user.
COPY model_repository /srv/model_repository
USER 10001:10001
# 8000: HTTP; 8001: the Open Inference Protocol over gRPC (GRPC_PORT; 0 turns it off).
EXPOSE 8000 8001
# Ready means every model loaded; the standard library is enough (no curl in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
