"""ONNX Runtime's execution providers by their ``--providers`` names: parsing the list, choosing
from what is installed here in the user's fallback order, and the one line that names what is
missing and how to install it. ONNX Runtime itself is imported only when asked for.
"""

from __future__ import annotations

from edge.errors import EdgeError

#: ``--providers`` names -> ONNX Runtime execution providers, best first.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PREFERENCE = tuple(PROVIDERS)
INSTALL_HINTS = {
    "tensorrt": ("the TensorRT execution provider: pip install onnxruntime-gpu and NVIDIA's TensorRT 10 libraries "
                 "(pip install tensorrt; on a Jetson, the onnxruntime-gpu wheel built for its JetPack)"),
    "cuda": "the CUDA execution provider: pip install onnxruntime-gpu (CUDA 12 and cuDNN 9 libraries)",
    "cpu": "ONNX Runtime's CPU provider: pip install onnxruntime (edgekit[onnx])",
}
ORT_INSTALL = 'ONNX Runtime is not installed: pip install onnxruntime (or pip install "edgekit[onnx]")'


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise EdgeError(ORT_INSTALL) from None
    return onnxruntime


def parse_providers(text: str) -> tuple[str, ...]:
    """``"tensorrt,cuda,cpu"`` -> ``("tensorrt", "cuda", "cpu")``; EdgeError naming an unknown one.

    Usable as an argparse ``type`` (raise ``argparse.ArgumentTypeError`` around it there).
    """
    names = tuple(part.strip().lower() for part in str(text).split(",") if part.strip())
    if not names:
        raise EdgeError(f"--providers {text!r}: name at least one of {', '.join(PROVIDERS)}")
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise EdgeError(f"--providers {text!r}: unknown provider {unknown[0]!r}; choose from {', '.join(PROVIDERS)}")
    if len(set(names)) != len(names):
        raise EdgeError(f"--providers {text!r}: a provider is named twice")
    return names


def available_text(available) -> str:
    """What this machine's ONNX Runtime offers, in ``--providers`` names where it has them."""
    ours = [n for n in PREFERENCE if PROVIDERS[n] in set(available)]
    if ours:
        return f"available here: {','.join(ours)}"
    return f"ONNX Runtime here offers {', '.join(sorted(available)) or 'no provider'}"


def installed_providers() -> list[str]:
    """``onnxruntime.get_available_providers()``, or [] when ONNX Runtime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def choose_providers(requested, available) -> tuple[list[str], list[str]]:
    """``(names to use, fallback warnings)`` for the ``requested`` names (None: every installed one, best first).

    A requested provider that is not installed is skipped with a warning when a later one in the
    list is installed (the list is the user's fallback order), and is an EdgeError (naming what is
    missing, what is available and how to install it) when none is.
    """
    available = set(available)
    if requested is None:
        chosen = [n for n in PREFERENCE if PROVIDERS[n] in available]
        if not chosen:
            raise EdgeError(f"ONNX Runtime offers none of {', '.join(PROVIDERS)} "
                            f"(it has {', '.join(sorted(available)) or 'none'}): {INSTALL_HINTS['cpu']}")
        return chosen, []
    names = parse_providers(",".join(requested)) if not isinstance(requested, str) else parse_providers(requested)
    missing = [n for n in names if PROVIDERS[n] not in available]
    chosen = [n for n in names if n not in missing]
    if not chosen:
        fallback = "" if "cpu" in names else f" (or allow a fallback, e.g. --providers {','.join(names)},cpu)"
        raise EdgeError(f"--providers {','.join(names)}: {PROVIDERS[missing[0]]} is not installed on this machine "
                        f"({available_text(available)}); install {INSTALL_HINTS[missing[0]]}{fallback}")
    notes = [f"--providers {','.join(names)}: {PROVIDERS[n]} is not installed on this machine "
             f"({available_text(available)}); falling back to {','.join(chosen)} (to get it: {INSTALL_HINTS[n]})"
             for n in missing]
    return chosen, notes
