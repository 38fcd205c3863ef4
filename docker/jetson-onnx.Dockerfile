# NVIDIA Jetson (JetPack 6, L4T r36, Ubuntu 22.04, Python 3.10) image for .onnx models on the GPU:
# `edge run model.onnx --providers tensorrt,cuda,cpu` with ONNX Runtime's TensorRT and CUDA execution
# providers, plus everything jetson.Dockerfile has (LiteRT on the CPU for .tflite models, the
# distribution's OpenCV with GStreamer for nvarguscamerasrc).
#
#   docker build -f docker/jetson-onnx.Dockerfile -t edgekit:jetson-onnx .       # on the Jetson
#   docker run --rm -it --runtime nvidia -v edgekit-cache:/cache -v "$PWD/models:/models:ro" \
#       edgekit:jetson-onnx /models/model.onnx --providers tensorrt,cuda,cpu --trt-fp16
#
# WHAT WAS AND WAS NOT BUILT: this file was written on an x86-64 machine with no Jetson, no NVIDIA
# GPU and no Docker engine. It has never been built, and the onnxruntime-gpu wheel has never been
# installed or run from it. What was run there: hadolint on this file (by hand: tests/test_docker.py
# lints *.Dockerfile, a glob this name does not match), `sh -n` on install-onnx-jetson.sh,
# install-runtime.sh (replayed by tests/test_deploy.py), and edgekit's ONNX Runtime path on the CPU
# provider (small .onnx test models; --providers / --trt-* handling; the CPU fallback; the TensorRT
# INT8 calibration table, which is made on the CPU). Unverified: the TensorRT and CUDA providers,
# a real engine in the cache, the base image tag, and the Jetson AI Lab index URL and its wheel.
#
# Why l4t-jetpack and not l4t-base (jetson.Dockerfile's base): from JetPack 6 the NVIDIA container
# runtime no longer mounts CUDA, cuDNN and TensorRT from the host, and the onnxruntime-gpu wheel for
# Jetson links against them; NVIDIA's l4t-jetpack image (NGC catalog, nvcr.io/nvidia/l4t-jetpack)
# carries the JetPack's CUDA, cuDNN and TensorRT. Pick the tag of your L4T release
# (`cat /etc/nv_tegra_release` on the board: R36 revision 4 = r36.4.0, JetPack 6.1/6.2, CUDA 12.6)
# and the matching Jetson AI Lab index (ORT_INDEX, jp6/cu126 for CUDA 12.6).
ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_BASE}

ARG ORT_INDEX=https://pypi.jetson-ai-lab.io/jp6/cu126
ARG ORT_VERSION=

# XDG_CACHE_HOME=/cache: the TensorRT engine cache (edgekit's default, one folder per model under
# /cache/edgekit/tensorrt) and pulled catalogue models land in one place, which the run mounts
# as a volume, so the engine TensorRT spends minutes building is built once, not on every start.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/edgekit \
    PATH=/opt/edgekit/bin:$PATH \
    XDG_CACHE_HOME=/cache

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-opencv: Ubuntu's OpenCV, built against GStreamer (and compiled against NumPy 1.x), as in
# jetson.Dockerfile; the NVIDIA GStreamer elements come from the host through --runtime nvidia.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip python3-opencv \
        gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c "import cv2, re, sys; info = cv2.getBuildInformation(); sys.exit(0 if re.search(r'GStreamer:\s+YES', info) else 'this OpenCV has no GStreamer')"

# The board install without pip's OpenCV, then ONNX Runtime's Jetson GPU build on top; the second
# script fails the build when the wheel lacks the TensorRT or CUDA provider.
COPY . /tmp/edgekit-src
RUN python3 -m venv --system-site-packages /opt/edgekit \
    && PYTHON=/opt/edgekit/bin/python sh /tmp/edgekit-src/docker/install-runtime.sh --system-opencv /tmp/edgekit-src \
    && PYTHON=/opt/edgekit/bin/python ORT_INDEX="${ORT_INDEX}" ORT_VERSION="${ORT_VERSION}" \
        sh /tmp/edgekit-src/docker/install-onnx-jetson.sh \
    && rm -rf /tmp/edgekit-src \
    && useradd --create-home --uid 1000 --groups video edge \
    && mkdir -p /cache \
    && chown edge /cache

VOLUME ["/cache"]
USER 1000
WORKDIR /home/edge
EXPOSE 8080

ENTRYPOINT ["edge", "run"]
CMD ["--source", "synthetic"]
