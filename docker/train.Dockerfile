# Desktop GPU trainer: TensorFlow's GPU image plus edgekit[convert] (tf-keras, TFMOT, pycocotools),
# for `edge data synth`, `edge train`, `edge convert` and `edge eval`.
#
#   docker build -f docker/train.Dockerfile -t edgekit:train .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" -v "$PWD/data:/data" -v "$PWD/runs:/runs" \
#       edgekit:train train --data /data/VOC2012 --out /runs/voc
#
# The base tag must stay inside pyproject's TensorFlow range (>=2.16,<2.22); install-trainer.sh keeps
# the base image's TensorFlow (the build that matches its CUDA) and pins tf-keras to its minor version.
ARG TF_IMAGE=tensorflow/tensorflow:2.19.0-gpu
FROM ${TF_IMAGE}

# KERAS_HOME: the ImageNet backbone weights (--backbone-weights imagenet) are cached on the /runs
# volume, so they download once, not on every `docker run`.
# Memory growth as the default: TensorFlow otherwise maps nearly all GPU memory at start-up.
# The `edge train` code sets it too, but only before the first op; the variable covers everything.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true \
    TF_CPP_MIN_LOG_LEVEL=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp \
    KERAS_HOME=/runs/.keras

COPY . /tmp/edgekit-src
RUN PYTHON=python3 sh /tmp/edgekit-src/docker/install-trainer.sh /tmp/edgekit-src \
    && rm -rf /tmp/edgekit-src \
    && mkdir -p /data /runs \
    && chmod 0777 /data /runs

# Datasets in, checkpoints and .tflite files out: both live on the host.
VOLUME ["/data", "/runs"]
WORKDIR /runs

# Any uid works (-u "$(id -u):$(id -g)" keeps host file ownership); 1000 is the default non-root one.
USER 1000:1000

ENTRYPOINT ["edge"]
CMD ["--help"]
