"""The desktop stage: training, pruning, quantization, export and evaluation (needs TensorFlow).

Nothing here is imported by ``edge``'s runtime modules; the ``edge`` CLI reaches it lazily for
the desktop subcommands. Import TensorFlow through :func:`convert.tf.import_tensorflow`.
"""
