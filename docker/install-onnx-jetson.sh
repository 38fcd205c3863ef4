#!/bin/sh
# ONNX Runtime with the CUDA and TensorRT execution providers, for a Jetson (JetPack 6), into the
# environment that already has edgekit's board install (install-runtime.sh).
#
# PyPI's onnxruntime-gpu has no aarch64 build for Jetson; ONNX Runtime's TensorRT EP page points to
# the Jetson Zoo (elinux.org/Jetson_Zoo#ONNX_Runtime), which for JetPack 6 points to NVIDIA's Jetson
# AI Lab pip index: one index per JetPack and CUDA release (jp6/cu126 = JetPack 6.1/6.2, CUDA 12.6).
# The wheel links against the CUDA, cuDNN and TensorRT of that JetPack, so the index must match the
# base image (jetson-onnx.Dockerfile's L4T_BASE) and the board.
#
# Usage: install-onnx-jetson.sh
#   PYTHON       interpreter whose environment receives the install (default: python3)
#   ORT_INDEX    the Jetson AI Lab index (default: https://pypi.jetson-ai-lab.io/jp6/cu126)
#   ORT_VERSION  an onnxruntime-gpu version that index carries (default: its newest)
#
# The onnx package comes too: edgekit's TensorRT INT8 calibration (--trt-int8 --calib DIR) runs
# ONNX Runtime's calibrator, which needs it; nothing else at run time does.
set -eu

PYTHON="${PYTHON:-python3}"
ORT_INDEX="${ORT_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}"
spec="onnxruntime-gpu"
if [ -n "${ORT_VERSION:-}" ]; then
    spec="onnxruntime-gpu==${ORT_VERSION}"
fi

# Two steps so that the wheel can only come from the Jetson index (with both indexes at once pip
# takes the highest version from either, and a PyPI aarch64 build would not be the Jetson one);
# the second step finds onnxruntime-gpu already satisfied and adds only its requirements
# (protobuf, flatbuffers, sympy, ...) from PyPI. numpy stays below 2: install-runtime.sh
# --system-opencv pinned it for the distribution's cv2, and this step must not upgrade it.
"$PYTHON" -m pip install --no-cache-dir --no-deps --index-url "$ORT_INDEX" "$spec"
"$PYTHON" -m pip install --no-cache-dir "$spec" "onnx>=1.16" "numpy<2"

# PyPI's CPU-only onnxruntime would shadow the GPU build if anything pulled it in.
if "$PYTHON" -m pip show onnxruntime >/dev/null 2>&1; then
    "$PYTHON" -m pip uninstall -y onnxruntime
fi

# get_available_providers() is what the wheel was compiled with (no GPU is needed to ask), so a
# CPU-only wheel picked by mistake fails the build here rather than on the board.
"$PYTHON" - <<'EOF'
import sys

import onnxruntime

providers = onnxruntime.get_available_providers()
missing = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p not in providers]
print("onnxruntime", onnxruntime.__version__, "providers", ", ".join(providers))
sys.exit(f"this onnxruntime lacks {', '.join(missing)}: not the Jetson GPU build" if missing else 0)
EOF
