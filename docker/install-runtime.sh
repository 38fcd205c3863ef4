#!/bin/sh
# The board's install: edgekit with no extras, so numpy + OpenCV + LiteRT and never TensorFlow.
#
# The Pi and Jetson images RUN this very script, and tests/test_deploy.py replays it into a fresh
# virtual environment, so what the test measures (no tensorflow, size, `edge run` works) is what
# the images get.
#
# Usage: install-runtime.sh [--system-opencv] [PROJECT_DIR]
#   PYTHON            interpreter whose environment receives the install (default: python3)
#   --system-opencv   keep the OpenCV already in the environment: the distribution's cv2 seen
#                     through a venv made with --system-site-packages. Jetson: apt's cv2 is built
#                     with GStreamer (nvarguscamerasrc); pip's opencv-python-headless has none and,
#                     installed on top, would shadow it. Raspberry Pi OS host with Picamera2: apt's
#                     python3-picamera2 and python3-opencv, same venv. So edgekit goes in with
#                     --no-deps and its other requirements are named here, numpy kept below 2
#                     because the distribution's cv2 (and Picamera2's simplejpeg) were compiled
#                     against NumPy 1.x and fail to import under NumPy 2. Keep this list in step
#                     with [project] dependencies in pyproject.toml (tests/test_deploy.py checks
#                     it with `pip check`).
set -eu

PYTHON="${PYTHON:-python3}"
system_opencv=0
if [ "${1:-}" = "--system-opencv" ]; then
    system_opencv=1
    shift
fi
PROJECT_DIR="${1:-.}"

# --no-cache-dir: an image should not carry pip's wheel cache (tens of MB on a board).
if [ "$system_opencv" = 1 ]; then
    "$PYTHON" -m pip install --no-cache-dir --no-deps "$PROJECT_DIR"
    "$PYTHON" -m pip install --no-cache-dir "numpy>=1.23,<2" "ai-edge-litert>=2.0" "flatbuffers>=23.5"
else
    "$PYTHON" -m pip install --no-cache-dir "$PROJECT_DIR"
fi
