#!/bin/sh
# Entry point the organisers call inside the container: sh predict.sh
# INPUT_DIR / OUTPUT_DIR default to the challenge mounts; PREDICT_ARGS adds options (e.g. --fp32).
set -eu
INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
cd "$(dirname "$0")"
# shellcheck disable=SC2086
exec "${PYTHON:-python3}" -m app predict -i "$INPUT_DIR" -o "$OUTPUT_DIR" ${PREDICT_ARGS:-}
