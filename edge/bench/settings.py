"""What one ``edge bench`` call runs: :class:`BenchSettings`, shared by the CLI and ``benchmarks/``."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edge.bench.memprofile import TRACED_WARMUP
from edge.errors import EdgeError


@dataclass
class BenchSettings:
    """Frame counts are per pipeline. ``None`` means "work it out": ``mem_frames`` then equals
    ``frames``, and ``traced_warmup`` comes from the source (:meth:`resolved`)."""

    models: list[Path]
    source: str = "synthetic"
    frames: int = 500  # timed frames (tracemalloc off)
    warmup: int = 50
    mem_frames: int | None = None  # traced frames (tracemalloc on)
    threads: int | str | None = "auto"  # "auto": ours measures its thread count end to end (edge run's default)
    capture: str = "auto"  # where ours reads: auto (edge run's rule), thread or inline
    # ours runs this many copies of the model, frames in turn (edge run --detectors K); "auto": as edge
    # run's, one, and with threads "auto" on several cores the tuner also tries two
    detectors: int | str = "auto"
    runtime: str | None = None
    score_threshold: float = 0.5
    rss_every: int = 10
    traced_warmup: int | None = None  # frames run under tracing before recording (see FrameMemoryProbe.run)
    rounds: int = 10  # timed frames of bare invoke, ours and the baseline alternate in this many rounds
    baseline: bool = True  # also run the usual pipeline (edge.bench.baseline)
    labels: Path | None = None
    # ONNX Runtime's options (providers, TensorRT): for the .onnx models only; ``runtime`` is for the .tflite ones
    backend_options: dict = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BenchSettings":
        """The settings ``edge bench``'s options give (see :mod:`edge.commands.bench`)."""
        from edge.commands._args import onnx_options_from_args

        return cls(models=list(args.models), source=args.source, frames=args.frames, warmup=args.warmup,
                   mem_frames=args.mem_frames, threads=args.threads, capture=args.capture,
                   detectors=args.detectors, runtime=args.runtime,
                   score_threshold=args.score, rss_every=args.rss_every, traced_warmup=args.traced_warmup,
                   rounds=args.rounds, baseline=not args.no_baseline, labels=args.labels,
                   backend_options=onnx_options_from_args(args, list(args.models)))

    def model_runtime(self, model) -> tuple[str | None, dict]:
        """``(runtime, backend options)`` for one model: ``runtime`` names a TFLite interpreter, so an
        ``.onnx`` model runs on ONNX Runtime with the ONNX options, a ``.tflite`` one without them."""
        from edge.backends import is_onnx

        return (None, dict(self.backend_options)) if is_onnx(model) else (self.runtime, {})

    def validate(self) -> None:
        """Raise :class:`EdgeError` naming the first setting that cannot work."""
        if not self.models:
            raise EdgeError("edge bench: give at least one MODEL")
        for model in self.models:
            if not Path(model).is_file():
                raise EdgeError(f"{model}: no such model file")
        from edge.backends import ONNX_RUNTIMES, is_onnx

        if self.runtime in ONNX_RUNTIMES:
            tflite = [m for m in self.models if not is_onnx(m)]
            if tflite:
                raise EdgeError(f"--runtime {self.runtime}: {Path(tflite[0]).name} is a TFLite model; ONNX Runtime "
                                "runs .onnx models (leave --runtime out to bench both kinds side by side)")
        elif self.runtime is not None and all(is_onnx(m) for m in self.models):
            raise EdgeError(f"--runtime {self.runtime}: picks the TFLite runtime of .tflite models, and every MODEL "
                            "here is .onnx (ONNX Runtime runs those; choose its providers with --providers)")
        minimum = {"frames": 2, "warmup": 0, "mem_frames": 1, "rss_every": 1, "traced_warmup": 0, "rounds": 1,
                   "threads": 1, "detectors": 1}  # "auto" strings pass
        for name, least in minimum.items():
            value = getattr(self, name)
            if isinstance(value, int) and value < least:
                words = "0 or more" if least == 0 else f"at least {least}"
                raise EdgeError(f"--{name.replace('_', '-')} {value}: must be {words}")
        if isinstance(self.detectors, int) and self.detectors > 1 and self.capture == "inline":
            raise EdgeError(f"--detectors {self.detectors} takes the frames in turn from a capture thread: "
                            "drop --capture inline")

    @property
    def traced_frames(self) -> int:
        return self.mem_frames if self.mem_frames is not None else self.frames

    def resolved(self, source) -> "BenchSettings":
        """A copy with every ``None`` count filled in; the traced warm-up covers ``source.warmup_hint``
        (a scene generator's cycle) and never goes below :data:`~edge.bench.memprofile.TRACED_WARMUP`."""
        traced_warmup = self.traced_warmup
        if traced_warmup is None:
            traced_warmup = max(TRACED_WARMUP, int(getattr(source, "warmup_hint", 0) or 0))
        return replace(self, mem_frames=self.traced_frames, traced_warmup=traced_warmup)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["models"] = [str(m) for m in self.models]
        data["labels"] = None if self.labels is None else str(self.labels)
        data["mem_frames"] = self.traced_frames
        data["backend_options"] = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                                   for k, v in self.backend_options.items()}
        return data
