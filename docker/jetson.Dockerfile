# NVIDIA Jetson (JetPack 6, L4T r36, Ubuntu 22.04, Python 3.10) runtime image: `edge run` with
# LiteRT on the CPU and the distribution's OpenCV, which is built with GStreamer, so the CSI camera
# pipeline (nvarguscamerasrc) opens. pip's opencv-python(-headless) wheels have no GStreamer.
#
#   docker build -f docker/jetson.Dockerfile -t edgekit:jetson .      # on the Jetson
#   docker run --rm -it --runtime nvidia -v /tmp/argus_socket:/tmp/argus_socket edgekit:jetson \
#       --source "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! \
#                 nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! \
#                 appsink drop=true max-buffers=1"
#
# --runtime nvidia makes the NVIDIA container runtime mount the host's Tegra libraries and its
# GStreamer plugins (nvarguscamerasrc, nvvidconv) into the container; the Argus socket lets the
# plugin talk to the host's nvargus-daemon, which owns the camera.
# Pick the base tag of your L4T release (`cat /etc/nv_tegra_release` on the board: R36 = JetPack 6).
ARG L4T_BASE=nvcr.io/nvidia/l4t-base:r36.2.0
FROM ${L4T_BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/edgekit \
    PATH=/opt/edgekit/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-opencv: Ubuntu's OpenCV, built against GStreamer (and compiled against NumPy 1.x).
# gstreamer1.0-plugins-*: videoconvert/appsink for the pipeline ends; the NVIDIA elements come
# from the host through --runtime nvidia.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip python3-opencv \
        gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c "import cv2, re, sys; info = cv2.getBuildInformation(); sys.exit(0 if re.search(r'GStreamer:\s+YES', info) else 'this OpenCV has no GStreamer')"

# A venv that still sees the system site-packages (the apt cv2), then the runtime install without
# pip's OpenCV (install-runtime.sh --system-opencv: numpy < 2 for that cv2, no opencv-python*).
COPY . /tmp/edgekit-src
RUN python3 -m venv --system-site-packages /opt/edgekit \
    && PYTHON=/opt/edgekit/bin/python sh /tmp/edgekit-src/docker/install-runtime.sh --system-opencv /tmp/edgekit-src \
    && rm -rf /tmp/edgekit-src \
    && python -c "import cv2, numpy; print('cv2', cv2.__version__, 'numpy', numpy.__version__)" \
    && useradd --create-home --uid 1000 --groups video edge

USER 1000
WORKDIR /home/edge
EXPOSE 8080

ENTRYPOINT ["edge", "run"]
CMD ["--source", "synthetic"]
