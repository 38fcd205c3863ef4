# Raspberry Pi (64-bit OS, Pi 4 / Pi 5) runtime image: `edge run` with numpy, OpenCV (headless) and
# LiteRT, and no TensorFlow. docker/README.md has the build and run commands.
#
#   docker buildx build --platform linux/arm64 -f docker/pi.Dockerfile -t edgekit:pi .
#   docker run --rm -it --device /dev/video0 -p 8080:8080 edgekit:pi --source 0 --preview 0.0.0.0:8080 --token "$TOKEN"
#
# Debian bookworm, the same release as current Raspberry Pi OS, so the video group id (44) matches
# the host's and --device /dev/video0 is readable by the non-root user without --privileged.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/edgekit \
    PATH=/opt/edgekit/bin:$PATH

# The exact install tests/test_deploy.py replays in a fresh virtual environment (no extras:
# ai-edge-litert ships manylinux aarch64 wheels for CPython 3.10-3.14, opencv-python-headless and
# numpy do too, so nothing compiles on the Pi).
COPY . /tmp/edgekit-src
RUN python -m venv /opt/edgekit \
    && PYTHON=/opt/edgekit/bin/python sh /tmp/edgekit-src/docker/install-runtime.sh /tmp/edgekit-src \
    && rm -rf /tmp/edgekit-src \
    && useradd --create-home --uid 1000 --groups video edge

USER 1000
WORKDIR /home/edge
# The preview page (edge run --preview 0.0.0.0:8080 --token T); publish it with -p 8080:8080.
EXPOSE 8080

ENTRYPOINT ["edge", "run"]
# Without arguments: the bundled demo model on the synthetic source, so `docker run edgekit:pi`
# proves the image works on a board with no camera attached.
CMD ["--source", "synthetic"]
