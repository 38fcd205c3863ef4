"""The model contract both stages agree on: anchors, box coding, labels, model info, the ``.tflite`` reader,
``Detections`` and the pure functions that tell a detector's outputs apart. numpy (and flatbuffers) only."""
