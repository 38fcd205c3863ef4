"""Pretrained weights on disk, read: which kind of source a path is, and its weight tensors by their own names.

Sources (:func:`source_kind`):

- ``keras_h5``: a Keras applications MobileNetV2 weights file (``save_weights`` HDF5, e.g.
  ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``, what ``imagenet`` downloads).
  Read with h5py and matched by layer name (Keras applications names, which our backbone keeps);
  layers of the file we do not have (``Logits`` of an ``include_top`` file) are ignored.
- ``odapi_frozen``: a TF1 OD API ``frozen_inference_graph.pb``. Its variables are ``Const`` nodes under
  their variable names. In the exports this was written against (the fixture
  ``ssdlite_mobilenet_v2_person_frozen.pb``, ``export_inference_graph``) BatchNorm is **not** folded:
  every conv is followed by ``FusedBatchNorm`` (epsilon 0.001, as ours) with ``gamma``, ``beta``,
  ``moving_mean`` and ``moving_variance`` constants, so they map one to one onto our
  BatchNormalization layers. A graph whose convs have no BatchNorm constants (folded by a graph
  transform) is refused with one line rather than guessed at.
- ``odapi_tf2``: a TF2 OD API checkpoint (``checkpoint/ckpt-0``) or SavedModel (its
  ``variables/variables``). The TF2 SSD MobileNetV2 feature extractor wraps Keras' MobileNetV2 as
  ``_feature_extractor/classification_backbone``; its variables are keyed by object path
  (``layer_with_weights-N/kernel``), N in the Keras construction order, which
  :func:`convert.pretrained_names.backbone_layer_names` reproduces. Only the backbone is mapped
  (the TF2 extras and heads are laid out differently), and with no graph to run it is checked by
  name, order and shape, not by feature maps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, first_line

KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
_TF2_KEY = re.compile(r"(?:^|/)_feature_extractor/classification_backbone/layer_with_weights-(\d+)/(\w+)"
                      r"/\.ATTRIBUTES/VARIABLE_VALUE$")


@dataclass
class ExportWeights:
    """The tensors of one source, keyed by their own names."""

    path: Path
    kind: str  # keras_h5 | odapi_frozen | odapi_tf2
    tensors: dict[str, np.ndarray]
    graph_def: object = None  # odapi_frozen: for the verification run


def _tf2_prefix(path: Path) -> str | None:
    """The checkpoint prefix of a TF2 export (checkpoint prefix, its folder, a SavedModel, or the
    exporter's output folder holding ``checkpoint/`` and ``saved_model/``), or None."""
    if path.is_dir():
        if (path / "checkpoint").is_dir():
            path = path / "checkpoint"
        elif (path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file():
            return str(path / "variables" / "variables")
        elif (path / "saved_model" / "saved_model.pb").is_file():
            return _tf2_prefix(path / "saved_model")
        indexes = sorted(path.glob("*.index"), key=lambda p: p.stat().st_mtime)
        state = path / "checkpoint"  # tf.train.CheckpointManager's state file names the newest
        match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(), re.M) if state.is_file() else None
        if match and Path(f"{path / match.group(1)}.index").is_file():
            return str(path / match.group(1))
        return str(indexes[-1])[: -len(".index")] if indexes else None
    if path.suffix == ".index" and path.is_file():
        return str(path)[: -len(".index")]
    if Path(str(path) + ".index").is_file():
        return str(path)
    return None


def source_kind(path: str | Path) -> str:
    """``keras_h5``, ``odapi_frozen`` or ``odapi_tf2``; EdgeError (one line) for anything else."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
        return "keras_h5"
    if path.is_file() and path.suffix.lower() == ".pb" and path.name != "saved_model.pb":
        return "odapi_frozen"
    if path.name == "saved_model.pb" and path.is_file():
        path = path.parent
    if _tf2_prefix(path) is not None:
        return "odapi_tf2"
    if not path.exists() and not Path(str(path) + ".index").exists():
        raise EdgeError(f"{path}: no such file or folder")
    raise EdgeError(f"{path}: not a pretrained-weights source (expected a Keras MobileNetV2 .h5 weights file, "
                    "an OD API frozen_inference_graph.pb, or a TF2 OD API checkpoint / SavedModel)")


def read_export(path: str | Path) -> ExportWeights:
    """All weight tensors of ``path`` (see :func:`source_kind`), keyed by their own names."""
    path = Path(path)
    kind = source_kind(path)
    if kind == "keras_h5":
        return ExportWeights(path, kind, _read_h5(path))
    if kind == "odapi_frozen":
        from convert.odapi import _parse_graph
        from convert.tf import import_tensorflow

        tf = import_tensorflow()
        graph_def = _parse_graph(path)
        tensors = {}
        for node in graph_def.node:
            if node.op == "Const" and node.attr["dtype"].type == tf.float32.as_datatype_enum \
                    and (node.name.startswith("FeatureExtractor/") or node.name.startswith("BoxPredictor_")):
                tensors[node.name] = tf.make_ndarray(node.attr["value"].tensor)
        return ExportWeights(path, kind, tensors, graph_def)
    return ExportWeights(path, kind, _read_tf2(path))


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    """``layer/weight`` -> array of a Keras ``save_weights`` HDF5 file (or a whole saved model's)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise EdgeError(f"{path}: not a Keras weights file (no layer_names attribute)")
            tensors = {}
            for layer in group.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                for weight in group[layer].attrs.get("weight_names", []):
                    weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                    attr = weight.split("/")[-1].split(":")[0]
                    tensors[f"{layer}/{attr}"] = np.asarray(group[layer][weight])
            return tensors
    except OSError as exc:
        raise EdgeError(f"{path}: not a readable HDF5 weights file ({first_line(exc)})") from None


def _read_tf2(path: Path) -> dict[str, np.ndarray]:
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    prefix = _tf2_prefix(path if path.name != "saved_model.pb" else path.parent)
    try:
        reader = tf.train.load_checkpoint(prefix)
        keys = reader.get_variable_to_shape_map()
    except Exception as exc:  # DataLossError, NotFoundError, ...
        raise EdgeError(f"{path}: unreadable TF2 checkpoint {prefix} ({first_line(exc)})") from None
    tensors = {}
    for key in keys:
        match = _TF2_KEY.search(key)
        if match and ".OPTIMIZER_SLOT" not in key:
            tensors[f"layer_with_weights-{int(match.group(1))}/{match.group(2)}"] = reader.get_tensor(key)
    if not tensors:
        raise EdgeError(f"{path}: not a TF2 OD API SSD MobileNetV2 checkpoint (no "
                        f"_feature_extractor/classification_backbone variables in {prefix})")
    return tensors
