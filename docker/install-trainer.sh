#!/bin/sh
# The desktop install: edgekit with the [convert] extra (TensorFlow, tf-keras, TFMOT, pycocotools).
#
# docker/train.Dockerfile RUNs this script on top of a TensorFlow GPU image. That image's
# TensorFlow is the one built against its CUDA and cuDNN, so it is pinned in place: otherwise pip
# is free to "upgrade" it to the newest release our range allows (a different CUDA build, ~600 MB),
# because tf-keras must share TensorFlow's minor version and the newest tf-keras asks for the
# newest TensorFlow. tests/test_deploy.py replays this script with --dry-run against the test
# interpreter to check that nothing but edgekit (and its small extras) would be installed.
#
# Usage: install-trainer.sh [PROJECT_DIR] [extra pip arguments...]
#   PYTHON   interpreter whose environment receives the install (default: python3)
set -eu

PYTHON="${PYTHON:-python3}"
PROJECT_DIR="${1:-.}"
[ $# -gt 0 ] && shift

tf_version="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("tensorflow"))' 2>/dev/null || true)"
if [ -n "$tf_version" ]; then
    tf_minor="${tf_version%.*}"   # 2.19.0 -> 2.19
    echo "install-trainer: keeping the installed TensorFlow $tf_version (tf-keras ~= $tf_minor.0)"
    "$PYTHON" -m pip install --no-cache-dir "$@" "$PROJECT_DIR[convert]" \
        "tensorflow==$tf_version" "tf-keras~=$tf_minor.0"
else
    "$PYTHON" -m pip install --no-cache-dir "$@" "$PROJECT_DIR[convert]"
fi
