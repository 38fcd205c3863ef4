"""What ``edge bench`` writes: the JSON report, the terminal table and summary, the markdown report.

Figures and ratios only: how they compare with the project's own targets is for the benchmark
scripts (``benchmarks/targets.py``) to say.
"""

from __future__ import annotations

from pathlib import Path

from edge.bench import BASELINE, OURS
from edge.detector.stages import STAGES
from edge.files import atomic_write, atomic_write_json

KB = 1024
MB = 1024 * 1024
PERCENTILES = ("p50_ms", "p90_ms", "p99_ms", "max_ms")


def json_ready(report: dict) -> dict:
    """The report without the in-memory runs (keys starting with ``_``)."""
    out = dict(report)
    out["models"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in report["models"]]
    return out


def write_json(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, json_ready(report))


def human_bytes(n: float | None, signed: bool = False) -> str:
    if n is None:
        return "-"
    sign = "+" if signed and n > 0 else ""
    a = abs(n)
    if a >= MB:
        return f"{sign}{n / MB:.2f} MB"
    if a >= 10 * KB:
        return f"{sign}{n / KB:.1f} KB"
    if a == int(a):
        return f"{sign}{int(n)} B"
    return f"{sign}{n:.1f} B"


def fmt_ratio(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}x"


# ---- the comparison table -------------------------------------------------------------------------------

TABLE_HEADER = ["model", "pipeline", "fps", "vs bare", "vs usual", "invoke p50", "pre p50", "post p50",
                "growth/frame", "transient/frame", "RSS slope"]


def _pipeline_row(r: dict, name: str) -> list[str]:
    p, bare = r[name], r["bare"]
    m = p["memory"]
    vs_usual = fmt_ratio(r["ratios"]["ours_fps_over_usual_fps"]) if name == OURS and r.get(BASELINE) else ""
    return ["", name, f"{p['fps']:.1f}", fmt_ratio(p["fps"] / bare["fps"] if bare["fps"] else None), vs_usual,
            f"{p['stages']['invoke']['p50_ms']:.2f} ms", f"{p['stages']['preprocess']['p50_ms']:.3f} ms",
            f"{p['stages']['postprocess']['p50_ms']:.3f} ms",
            human_bytes(m["growth_trend_bytes_per_frame"], signed=True), human_bytes(m["transient_median_bytes"]),
            f"{p['rss']['slope_bytes_per_frame']:+.1f} B"]


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """The comparison table: one row per model and pipeline (growth: the trend, see MemoryProfile)."""
    rows = []
    for r in report["models"]:
        bare = r["bare"]
        rows.append([r["model_name"], "bare invoke()", f"{bare['fps']:.1f}", "1.00x", "",
                     f"{bare['invoke']['p50_ms']:.2f} ms", "", "", "", "", ""])
        rows += [_pipeline_row(r, name) for name in (OURS, BASELINE) if r.get(name)]
    return list(TABLE_HEADER), rows


def format_table(report: dict) -> str:
    header, rows = table_rows(report)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


# ---- the terminal summary -------------------------------------------------------------------------------


def _settings_line(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    return (f"edge bench: {m['cpu']}, {m['usable_cores']} usable cores; source {s['source']}; per pipeline "
            f"{s['warmup']} warm-up, {s['frames']} timed and {s['mem_frames']} traced frames "
            f"(after {s['traced_warmup']} traced warm-up frames)")


def _layout_words(key: str) -> str:
    """``"2"`` -> ``2 threads``, ``"2x1"`` -> ``2 detectors x 1 thread`` (see ``Layout.key``)."""
    detectors, _, threads = key.rpartition("x")
    words = f"{threads} thread{'s' if threads != '1' else ''}"
    return f"{detectors} detectors x {words}" if detectors else words


def threads_text(r: dict) -> str:
    """Which thread counts ran: ours (chosen end to end, or given), the baseline's best, bare invoke()."""
    rt = r["runtime"]
    text = f"ours {rt['threads']} thread(s)"
    if rt.get("detectors", 1) > 1:
        further = r.get("rss", {}).get("further_detectors_load_delta_bytes")
        cost = f", the further {rt['detectors'] - 1} +{further / 2**20:.1f} MB RSS" if further is not None else ""
        text = f"ours {rt['detectors']} detectors of {rt['threads']} thread(s) each, frames in turn{cost}"
    auto = rt.get("threads_auto")
    if auto:
        measured = ", ".join(f"{_layout_words(key)} {fps:.1f} fps" for key, fps in auto["fps_by_layout"].items())
        text += f" (auto, measured end to end: {measured})"
    base = r.get(BASELINE)
    if base and base.get("fps_by_threads"):
        measured = ", ".join(f"{n}: {fps:.1f} fps" for n, fps in base["fps_by_threads"].items())
        text += f"; usual at its best, {base['threads']} thread(s) ({measured})"
    if rt.get("threads_not_tuned"):
        text += f" (not tuned, {rt['threads_not_tuned']})"
    if rt.get("bare_threads"):
        text += f"; bare invoke() {rt['bare_threads']} thread(s)"
    if rt.get("capture"):
        text += f"; ours reads {rt['capture']}"
    return text


def _model_lines(r: dict) -> list[str]:
    rt, ratios = r["runtime"], r["ratios"]
    device = rt.get("device") or "cpu"
    where = "" if device == "cpu" and not rt.get("fallback") else f" on {device}"
    where += f" ({rt['fallback']})" if rt.get("fallback") else ""
    lines = [f"{r['model_name']}: {rt['name']} {rt['version']}{where}; {r['head']} head, "
             f"input {r['input_size'][1]}x{r['input_size'][0]}", f"  threads: {threads_text(r)}"]
    ours = f"  ours: {fmt_ratio(ratios['ours_fps_over_bare_fps'])} the fps of bare invoke()"
    if r.get(BASELINE):
        ours_t = r[OURS]["memory"]["transient_median_bytes"]
        usual_t = r[BASELINE]["memory"]["transient_median_bytes"]
        transient = ratios["ours_transient_over_usual_transient"]
        ours += (f" and {fmt_ratio(ratios['ours_fps_over_usual_fps'])} the usual pipeline's; transient per frame "
                 f"{human_bytes(ours_t)} vs {human_bytes(usual_t)}"
                 + ("" if transient is None else f" ({transient:.1e} of the usual)"))
    lines.append(ours)
    if r.get("usual_skipped"):
        lines.append(f"  usual pipeline skipped: {r['usual_skipped']}")
    for warning in rt.get("warnings") or ():
        lines.append(f"  warning: {warning}")
    if rt.get("note"):
        lines.append(f"  note: {rt['note']}")
    return lines


def format_summary(report: dict) -> str:
    """The terminal output: what ran, the comparison table, then the ratios per model."""
    lines = [_settings_line(report), "", format_table(report), ""]
    for r in report["models"]:
        lines += _model_lines(r)
    return "\n".join(lines)


# ---- the markdown report --------------------------------------------------------------------------------

_DEFINITIONS = (
    "*growth/frame*: net Python heap growth per frame (tracemalloc; least-squares trend of the cumulative "
    "growth over the traced frames; the mean is in the per-model table); negative means memory was returned. "
    "*transient/frame*: median peak above the frame's start/end level, i.e. bytes allocated and freed "
    "within the frame. With several detectors taking the frames in turn, a frame is the span between two "
    "hand-ons and the growth is read every 25 frames, when every worker is idle (it is put on the last of "
    "them). *RSS slope*: least-squares bytes per frame over the timed frames. "
    "Ours runs capture on its own thread (as `edge run` does); the usual pipeline reads synchronously, "
    "as the examples do. Growth in the usual pipeline over a short run can be numpy's caches of small "
    "blocks (shape arrays) being refilled under tracing: bounded, smaller per frame the longer the run, "
    "and absent from RSS.")


def _md_header(report: dict) -> list[str]:
    m, s = report["machine"], report["settings"]
    out = ["# edge bench report", ""]
    if report.get("command"):
        out += ["```", report["command"], "```", ""]
    out += [f"- Machine: {m['cpu']} ({m['machine']}), {m['usable_cores']} usable of {m['cores']} cores, {m['os']}",
            "- Versions: " + ", ".join(f"{k} {val}" for k, val in m["versions"].items()),
            f"- Load average at start: {m['load_average_1min_at_start']} (other processes share these cores)",
            f"- Source: `{s['source']}`; per pipeline {s['warmup']} warm-up, {s['frames']} timed frames "
            f"(tracemalloc off, in {s['rounds']} rounds), {s['mem_frames']} traced frames (tracemalloc on, after "
            f"{s['traced_warmup']} traced warm-up frames); RSS every {s['rss_every']} frames",
            f"- Run time: {report['seconds']} s", ""]
    header, rows = table_rows(report)
    out += ["## Comparison", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c or " " for c in row) + " |" for row in rows]
    return out + ["", _DEFINITIONS, ""]


def _md_load_memory(r: dict) -> list[str]:
    im, rss = r["interpreter_memory"], r["rss"]
    return ["| memory | bytes |", "|---|---|",
            f"| model file | {human_bytes(im['model_file_bytes'])} |",
            f"| RSS across loading the model (interpreter and tensors) | {human_bytes(im['rss_load_bytes'], True)} |",
            f"| sum of tensor sizes | {human_bytes(im['tensor_bytes'])} |",
            f"| RSS at start | {human_bytes(rss['at_start_bytes'])} |",
            f"| RSS after Detector load | {human_bytes(rss['after_model_load_bytes'])} "
            f"({human_bytes(rss['detector_load_delta_bytes'], True)}) |",
            f"| RSS after warm-up | {human_bytes(rss['after_warmup_bytes'])} |",
            f"| peak RSS of the process so far (VmHWM) | {human_bytes(rss['peak_rss_process_bytes'])} |", ""]


def _md_stages(r: dict) -> list[str]:
    ours, usual = r[OURS], r.get(BASELINE)
    out = ["| stage (ms) | ours p50 | p90 | p99 | max | usual p50 | p90 | p99 | max |", "|---|" + "---|" * 8]
    for stage in STAGES + ("frame",):
        o = ours["stages"][stage] if stage != "frame" else ours["frame"]
        u = (usual["stages"][stage] if stage != "frame" else usual["frame"]) if usual else None
        cells = [f"{o[k]:.3f}" for k in PERCENTILES] + ([f"{u[k]:.3f}" for k in PERCENTILES] if u else ["-"] * 4)
        out.append(f"| {stage} | " + " | ".join(cells) + " |")
    bare = r["bare"]
    out += ["", f"Bare `invoke()`: {bare['fps']:.1f} fps, p50 {bare['invoke']['p50_ms']:.2f} ms, "
            f"p99 {bare['invoke']['p99_ms']:.2f} ms. Ours: {ours['fps']:.1f} fps ({ours['frames_dropped']} dropped)"
            + (f"; usual: {usual['fps']:.1f} fps." if usual else "."), ""]
    return out


_MEMORY_ROWS = (("growth_trend_bytes_per_frame", "net heap growth (trend)"),
                ("growth_bytes_per_frame", "net heap growth (mean)"),
                ("growth_frames_nonzero", "frames with growth != 0"),
                ("transient_median_bytes", "transient, median"), ("transient_p99_bytes", "transient, p99"),
                ("transient_max_bytes", "transient, max"), ("probe_floor_transient_bytes", "probe floor (subtracted)"))


def _md_frame_memory(r: dict) -> list[str]:
    ours, usual = r[OURS], r.get(BASELINE)
    out = ["| memory per frame | ours | usual |", "|---|---|---|"]
    for key, label in _MEMORY_ROWS:
        fmt = (lambda x: "-" if x is None else str(x)) if key == "growth_frames_nonzero" else human_bytes
        out.append(f"| {label} | {fmt(ours['memory'].get(key))} | "
                   f"{fmt(usual['memory'].get(key) if usual else None)} |")
    o, u = ours["rss"].get("slope_bytes_per_frame"), usual["rss"].get("slope_bytes_per_frame") if usual else None
    out += [f"| RSS slope, timed frames (B/frame) | {o:+.2f} | " + ("-" if u is None else f"{u:+.2f}") + " |", ""]
    return out


def _md_ratios(r: dict) -> list[str]:
    ratios = r["ratios"]
    out = [f"Ours over bare `invoke()`: {fmt_ratio(ratios['ours_fps_over_bare_fps'], 3)} the fps."]
    if r.get(BASELINE):
        transient = ratios["ours_transient_over_usual_transient"]
        out[0] += (f" Ours over the usual pipeline: {fmt_ratio(ratios['ours_fps_over_usual_fps'], 3)} the fps, "
                   f"transient {'-' if transient is None else f'{transient:.2e}'}, preprocess p50 "
                   f"{fmt_ratio(ratios['ours_preprocess_over_usual_preprocess'])}, postprocess p50 "
                   f"{fmt_ratio(ratios['ours_postprocess_over_usual_postprocess'])}.")
    if r.get("usual_skipped"):
        out.append(f"Usual pipeline skipped: {r['usual_skipped']}.")
    return out + [""]


def _md_model(r: dict) -> list[str]:
    rt = r["runtime"]
    out = [f"## {r['model_name']}", "",
           f"Runtime {rt['name']} {rt['version']}; {r['head']} head, input {r['input_size'][1]}x{r['input_size'][0]}. "
           f"Threads: {threads_text(r)}.", ""]
    if rt.get("note"):
        out += [f"> {rt['note']}", ""]
    return out + _md_load_memory(r) + _md_stages(r) + _md_frame_memory(r) + _md_ratios(r)


def format_markdown(report: dict, plots: list[str] | None = None, plots_note: str | None = None) -> str:
    """The readable report: machine, settings, comparison table, then per model memory, latency and ratios."""
    out = _md_header(report)
    for r in report["models"]:
        out += _md_model(r)
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    elif plots_note:
        out += ["## Plots", "", plots_note, ""]
    return "\n".join(out)


def write_report(report: dict, directory: Path, stem: str = "bench") -> tuple[Path, list[Path], str | None]:
    """``<stem>.md`` and the PNG plots in ``directory``; returns (markdown path, plots, why plots were skipped)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    note = None
    try:
        from edge.bench.plots import write_plots

        plots = write_plots(report, directory, stem)
    except ImportError as exc:
        note = f"Plots skipped: matplotlib is not installed ({exc}); pip install 'edgekit[plots]' to get them."
    md_path = directory / f"{stem}.md"
    atomic_write(md_path, format_markdown(report, [str(p) for p in plots], note))
    return md_path, plots, note
