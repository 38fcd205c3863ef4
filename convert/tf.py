"""The one place the desktop stage imports TensorFlow, so the error for a missing extra is uniform.

tensorflow-model-optimization works only on tf-keras models, so ``TF_USE_LEGACY_KERAS=1`` is set
before TensorFlow is first imported, and Keras is always taken from ``tf_keras``.
"""

from __future__ import annotations

import os

from edge.errors import EdgeError

_INSTALL_HINT = 'install the desktop extra: pip install "edgekit[convert]" (or pip install ".[convert]")'


def import_tensorflow():
    """Return the ``tensorflow`` module, or raise EdgeError naming the extra to install."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise EdgeError(f"TensorFlow is not installed ({exc}); {_INSTALL_HINT}") from None
    return tf


def import_keras():
    """Return ``tf_keras`` (Keras 2), the only Keras tensorflow-model-optimization accepts."""
    import_tensorflow()
    try:
        import tf_keras
    except ImportError as exc:
        raise EdgeError(f"tf-keras is not installed ({exc}); {_INSTALL_HINT}") from None
    return tf_keras


def import_tfmot():
    """Return ``tensorflow_model_optimization`` (pruning, QAT)."""
    import_keras()
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as exc:
        raise EdgeError(f"tensorflow-model-optimization is not installed ({exc}); {_INSTALL_HINT}") from None
    return tfmot
