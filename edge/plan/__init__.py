"""``edge plan``: the peak RSS ``edge run`` will reach, predicted from the model file and the setup.

:mod:`edge.plan.arena` reads a ``.tflite`` flatbuffer and plans its tensor arena as TFLite does;
:mod:`edge.plan.predict` adds the weights, XNNPACK's copies, the per-camera buffers, the sinks and
the measured baseline (``baseline.json``); :mod:`edge.plan.measure` runs ``edge run``'s pipeline for
real to check the prediction and to measure the baseline. Nothing here imports TensorFlow.
"""
