"""What ``edge convert`` converts: the source, identified from its path and loaded as a :class:`Source`.

- a training run directory (``config.json`` + ``checkpoints/``): trainable, so it can be pruned and QAT-tuned;
- a Keras model file of our SSD (``.keras`` / ``.h5``) with its ``config.json`` beside it: trainable too;
- a TF1 OD API ``frozen_inference_graph.pb``: cut at its raw head (:func:`convert.odapi.load_frozen_graph`);
- a TF2 OD API SavedModel from ``export_tflite_graph_tf2.py``: already ends in the post-process op.

Every loader describes the head as a :class:`convert.head.HeadSpec`; OD API sources carry no
labels, so they come from ``--labels`` (or are numbered). Anything unusable is an EdgeError of one
line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from convert.config import CONFIG_NAME, SSDConfig
from convert.head import HeadSpec
from edge.errors import EdgeError, first_line

KIND_RUN = "training run"
KIND_KERAS = "keras model"
KIND_FROZEN = "OD API frozen graph"
KIND_SAVED_MODEL = "OD API TF2 SavedModel"


@dataclass
class Source:
    kind: str  # one of the KIND_* names (it is also the report's ``source_kind``)
    head: HeadSpec
    labels: list[str]
    config: SSDConfig | None = None  # trainable sources: their training contract (data, loss)
    model: object = None  # tf-keras model (trainable sources)
    network: Callable | None = None  # OD API sources: normalised pixels -> raw head (or the op's outputs)

    @property
    def trainable(self) -> bool:
        return self.model is not None

    @property
    def ends_in_postprocess(self) -> bool:
        """The network already ends in the post-process op (a TF2 OD API export)."""
        return self.kind == KIND_SAVED_MODEL

    def describe(self) -> str:
        height, width = self.head.input_size
        return f"{self.kind}, {self.head.num_classes} classes, input {height}x{width}"


def load_source(path: str | Path, labels: str | Path | None = None) -> Source:
    """Identify and load the source at ``path``; ``labels`` names the classes of OD API sources."""
    source = Path(path)
    if not source.exists():
        raise EdgeError(f"{source}: no such file or directory")
    if source.is_dir() and (source / CONFIG_NAME).is_file():
        return _training_run(source)
    if source.is_file() and source.suffix.lower() in (".keras", ".h5"):
        return _keras_model(source)
    if source.is_file() and source.suffix.lower() in (".pb", ".pbtxt") and source.name != "saved_model.pb":
        from convert.odapi import load_frozen_graph

        graph = load_frozen_graph(source)
        return Source(KIND_FROZEN, graph.head, _load_labels(labels, graph.num_classes), network=graph.network)
    saved = source if source.is_dir() else source.parent
    if (saved / "saved_model.pb").is_file():
        from convert.odapi import load_tf2_saved_model

        export = load_tf2_saved_model(saved)
        return Source(KIND_SAVED_MODEL, export.head, _load_labels(labels, export.num_classes),
                      network=export.network)
    raise EdgeError(f"{source}: not a training run directory (no {CONFIG_NAME}), Keras model (.keras/.h5), "
                    "frozen graph (.pb) or SavedModel directory")


def _trainable(kind: str, model, config: SSDConfig) -> Source:
    return Source(kind, config.head, list(config.labels), config=config, model=model)


def _training_run(run_dir: Path) -> Source:
    from convert.checkpoints import load_trained_model

    try:
        model, config = load_trained_model(run_dir)
    except (IndexError, OSError, RuntimeError) as exc:  # truncated data files surface as IndexError
        raise EdgeError(f"{run_dir}: unreadable checkpoint ({first_line(exc)})") from None
    return _trainable(KIND_RUN, model, config)


def _keras_model(path: Path) -> Source:
    config_path = path.parent / CONFIG_NAME
    if not config_path.is_file():
        raise EdgeError(f"{path}: a Keras model needs its {CONFIG_NAME} beside it ({config_path} is missing)")
    config = SSDConfig.load(config_path)
    from convert.tf import import_keras

    keras = import_keras()
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # OSError, ValueError from h5py/zip
        raise EdgeError(f"{path}: cannot load the Keras model ({first_line(exc)})") from None
    anchors = int(model.outputs[0].shape[1]) if model.outputs else -1
    if anchors != config.anchors.num_anchors or tuple(model.inputs[0].shape[1:3]) != \
            (config.architecture.input_size,) * 2:
        raise EdgeError(f"{path}: the model does not match {config_path} (input {model.inputs[0].shape}, "
                        f"{anchors} boxes vs {config.anchors.num_anchors} anchors)")
    return _trainable(KIND_KERAS, model, config)


def _load_labels(path: str | Path | None, count: int) -> list[str]:
    if path is None:
        return [f"class_{i + 1}" for i in range(count)]
    from edge.contract.labels import load_labels

    labels = load_labels(path)
    if len(labels) < count:
        raise EdgeError(f"--labels {path}: {len(labels)} labels but the model has {count} classes")
    return labels[:count]
