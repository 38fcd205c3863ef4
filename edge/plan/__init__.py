"""``edge plan``: the peak RSS ``edge run`` will reach, predicted from the model file and the setup.

:mod:`edge.plan.graph` reads a ``.tflite`` flatbuffer's subgraph 0 and :mod:`edge.plan.arena` plans
its tensor arena as TFLite does; :mod:`edge.plan.components` sizes the weights, XNNPACK's copies,
the per-camera buffers and the sinks, :mod:`edge.plan.allocator` the freed memory glibc keeps
resident, :mod:`edge.plan.baseline` holds the measured figures (``baseline.json``) and
:mod:`edge.plan.predict` adds them up. :mod:`edge.plan.measure` runs ``edge run``'s pipeline for
real, in-process; :mod:`edge.plan.check` runs it in a fresh process and compares it with a
prediction, and :mod:`edge.plan.calibrate` measures the baseline with it. Nothing here imports
TensorFlow.
"""
