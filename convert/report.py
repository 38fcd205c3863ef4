"""The conversion report: ``<model>.report.json`` beside the model, and the same numbers as a table.

Sizes in KiB (1024 bytes), latency in ms (``invoke()`` only), mAP in points (0..100).
"""

from __future__ import annotations

from pathlib import Path

from edge.files import atomic_write_json


def report_path(model_path: str | Path) -> Path:
    """``model.tflite`` -> ``model.report.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".report.json")


def write_report(model_path: str | Path, report: dict) -> Path:
    return atomic_write_json(report_path(model_path), report)


def _pct(value) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def _num(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(report: dict) -> str:
    """One row per measured model (float reference, output), plus the verdict line."""
    header = ("model", "size KiB", "gzip KiB", "sparsity %", "mAP@.5", "mAP@[.5:.95]", "median ms", "p90 ms")
    rows = [header]
    for name, entry in report.get("models", {}).items():
        stats = entry.get("stats", {})
        latency = entry.get("latency") or {}
        evaluation = entry.get("eval") or {}
        rows.append((
            name,
            _num(stats.get("size_bytes", 0) / 1024),
            _num(stats.get("gzip_bytes", 0) / 1024),
            _pct((stats.get("sparsity") or {}).get("overall")),
            _pct(evaluation.get("map50")),
            _pct(evaluation.get("map")),
            _num(latency.get("median_ms"), "{:.2f}"),
            _num(latency.get("p90_ms"), "{:.2f}"),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    drop = report.get("map_drop")
    if drop:
        lines.append(f"mAP@0.5 change vs float: {-drop['map50_points']:+.2f} points, "
                     f"mAP@[.5:.95]: {-drop['map_points']:+.2f} points")
    for step in report.get("steps", []):
        lines.append(f"step {step['name']}: {step.get('summary', '')} ({step.get('seconds', 0):.1f} s)")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
