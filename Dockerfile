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

COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

WORKDIR /workspace
COPY app/ app/
COPY weights/ weights/
COPY predict.sh .

# Unprivileged: uid 1000, the first user on most Linux hosts, so an outputs/ folder of theirs is
# writable as mounted; for another owner, docker run --user "$(id -u):$(id -g)". Nothing else is written.
USER 1000:1000
CMD ["sh", "predict.sh"]
