# Challenge container: sh predict.sh segments /workspace/inputs into /workspace/outputs.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# The distribution's Python is fixed by the pinned base image tag.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# WITH_RAY=1 builds the cluster variant (python -m app cluster); the challenge image leaves Ray out.
ARG WITH_RAY=0
COPY requirements.txt requirements-gpu.txt requirements-cluster.txt /tmp/
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir -r /tmp/requirements-gpu.txt \
    && if [ "$WITH_RAY" = 1 ]; then pip install --no-cache-dir -r /tmp/requirements-cluster.txt; fi \
    && rm /tmp/requirements*.txt

WORKDIR /workspace
COPY app/ app/
# the authoring tools (app/convert/: nnU-Net import, ONNX export) stay out: .dockerignore
COPY weights/ weights/
COPY predict.sh .

# Unprivileged: uid 1000, the first user on most Linux hosts, so an outputs/ folder of theirs is
# writable as mounted; for another owner, docker run --user "$(id -u):$(id -g)". Nothing else is written.
USER 1000:1000
CMD ["sh", "predict.sh"]
