"""Inference engines behind one seam, :class:`edge.backends.base.Backend`: the detector writes its input into a
view, invokes, and reads outputs by role, whatever engine runs underneath."""
