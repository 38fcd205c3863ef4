"""``edge bench``: the runner's figures, its files (JSON, markdown, plots) and its errors; the
benchmark scripts' targets; and that the bench measures the frame step ``edge run`` runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from edge import cli
from edge.bench.report import format_summary, json_ready, write_json, write_report
from edge.bench.run import run_bench
from edge.bench.settings import BenchSettings
from edge.detector.stages import STAGES

KB = 1024
PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def targets():
    """benchmarks/targets.py (the scripts import it as ``targets``; benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_targets", PROJECT / "benchmarks" / "targets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def report(ssd_model_path):
    settings = BenchSettings(models=[ssd_model_path], source="synthetic:320x240", frames=24, warmup=5,
                             mem_frames=20, threads=2, rounds=2, rss_every=4, traced_warmup=30)
    return run_bench(settings, progress=False)


def test_bench_reports_ours_usual_and_bare_on_the_same_run(report, ssd_model_path):
    (r,) = report["models"]
    assert r["model"] == str(ssd_model_path)
    assert r["head"] == "postprocess"
    assert r["runtime"]["threads"] == 2
    for name in ("ours", "usual"):
        p = r[name]
        assert p["frames"] == 24
        assert set(p["stages"]) == set(STAGES)
        assert p["stages"]["invoke"]["p50_ms"] > 0
        assert p["memory"]["frames"] == 20
        assert p["rss"]["samples"] >= 6 and p["rss"]["slope_segments"] == 2
    assert r["bare"]["frames"] == 24 and r["bare"]["fps"] > 0
    # The figures the bench is for: ours allocates ~nothing per frame, the usual way a frame's worth.
    ours, usual = r["ours"]["memory"], r["usual"]["memory"]
    assert ours["transient_median_bytes"] < 16 * KB
    assert usual["transient_median_bytes"] > 320 * 240 * 3  # at least the cvtColor copy of the frame
    assert r["ratios"]["ours_transient_over_usual_transient"] < 0.05
    assert r["ratios"]["ours_fps_over_usual_fps"] > 0
    im = r["interpreter_memory"]
    assert im["tensor_bytes"] > 3_000_000  # the weights of a 4 MB int8 model are tensors too
    assert im["model_file_bytes"] == ssd_model_path.stat().st_size
    assert r["rss"]["peak_rss_process_bytes"] >= r["rss"]["after_model_load_bytes"] > 0


def test_bench_reports_figures_and_does_not_grade_them(report):
    (r,) = report["models"]
    assert "goals" not in r and "targets" not in r
    assert "goals" not in format_summary(report) and "met" not in format_summary(report)
    assert report["settings"]["mem_frames"] == 20 and report["settings"]["baseline"] is True


def test_traced_warmup_defaults_to_what_the_source_asks_for(ssd_model_path, traffic_video):
    from edge.bench.memprofile import TRACED_WARMUP
    from edge.live.sources import open_source
    from edge.live.synthetic import SyntheticSource

    settings = BenchSettings(models=[ssd_model_path])
    for spec, expected in (("synthetic:160x120", SyntheticSource.warmup_hint),
                           (str(traffic_video), TRACED_WARMUP)):
        source = open_source(spec)
        try:
            resolved = settings.resolved(source)
        finally:
            source.close()
        assert resolved.traced_warmup == expected and resolved.mem_frames == settings.frames
    assert SyntheticSource.warmup_hint > TRACED_WARMUP  # its shapes respawn: the trace starts after a few
    explicit = BenchSettings(models=[ssd_model_path], traced_warmup=7, mem_frames=3)
    assert explicit.resolved(SyntheticSource()).traced_warmup == 7
    assert explicit.to_dict()["mem_frames"] == 3 and explicit.to_dict()["models"] == [str(ssd_model_path)]


def test_targets_are_checked_by_the_benchmark_scripts(report, targets):
    fake = json.loads(json.dumps(json_ready(report)))["models"][0]
    met = {c["key"]: c["met"] for c in targets.evaluate(fake)}
    assert set(met) == {"fps_over_baseline", "fps_over_bare", "transient", "zero_growth", "rss_slope"}
    fake["ours"]["memory"]["growth_trend_bytes_per_frame"] = 1065.0
    assert {c["key"]: c["met"] for c in targets.evaluate(fake)}["zero_growth"] is False
    for returned in (-0.4, -250.0):  # memory given back is never a miss
        fake["ours"]["memory"]["growth_trend_bytes_per_frame"] = returned
        assert {c["key"]: c["met"] for c in targets.evaluate(fake)}["zero_growth"] is True
    fake["ours"]["memory"]["transient_median_bytes"] = 1500.0
    assert {c["key"]: c["met"] for c in targets.evaluate(fake)}["transient"] is False
    fake["usual"] = None
    met = {c["key"]: c["met"] for c in targets.evaluate(fake)}
    assert met["fps_over_baseline"] is None  # no baseline: not applicable rather than missed
    assert "MISSED" in targets.format_targets({"models": [fake]})


def test_json_markdown_and_plots(report, tmp_path):
    write_json(report, tmp_path / "out" / "bench.json")
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert data["machine"]["usable_cores"] >= 1 and "numpy" in data["machine"]["versions"]
    assert "_runs" not in data["models"][0]
    md_path, plots, note = write_report(report, tmp_path / "report", "fixture")
    assert note is None
    assert sorted(p.name for p in plots) == ["fixture_latency.png", "fixture_rss.png", "fixture_transient.png"]
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md_path.read_text()
    assert "| capture_wait |" in text and "![fixture_rss](fixture_rss.png)" in text
    assert "Goals" not in text and "missed" not in text
    assert "ssd_mobilenet_v1_coco_quant.tflite" in format_summary(report)


def test_latency_plot_axis_has_no_negative_milliseconds(report, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge.bench import plots

    axes = []
    real_subplots = plt.subplots

    def recording_subplots(*args, **kwargs):
        fig, ax = real_subplots(*args, **kwargs)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", recording_subplots)
    plots.write_plots(report, tmp_path, "axes")
    latency = axes[1][0, 0]
    assert latency.get_yscale() == "log"
    bottom, top = latency.get_ylim()
    assert 0 < bottom < top


def test_report_without_matplotlib_says_why(report, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    md_path, plots, note = write_report(report, tmp_path, "bench")
    assert plots == [] and "matplotlib" in note
    assert "Plots skipped" in md_path.read_text()
    assert not list(tmp_path.glob("*.png"))


def test_cli_bench_writes_json_and_report(ssd_model_path, tmp_path, capsys):
    code = cli.main(["bench", str(ssd_model_path), "--source", "synthetic:160x120", "--frames", "8",
                     "--warmup", "2", "--mem-frames", "6", "--traced-warmup", "5", "--threads", "2", "--rounds", "1", "--no-progress",
                     "--json", str(tmp_path / "b.json"), "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0
    assert "bare invoke()" in out and "usual" in out and "goals" not in out
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["frames"] == 8
    assert (tmp_path / "r" / "bench.md").is_file()


@pytest.mark.parametrize("args, message", [
    (["missing.tflite"], "missing.tflite: no such model file"),
    (["{model}", "--frames", "1"], "--frames 1"),
    (["{model}", "--source", "nowhere.mp4"], "--source nowhere.mp4"),
    (["{model}", "--rounds", "0"], "--rounds 0"),
])
def test_cli_bench_bad_input_is_one_line(ssd_model_path, tmp_path, capsys, args, message):
    argv = ["bench"] + [a.format(model=ssd_model_path) for a in args] + ["--json", str(tmp_path / "x.json")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge: error:") and message in err[0]
    assert not (tmp_path / "x.json").exists()


def test_cli_bench_rejects_a_file_that_is_not_a_model(tmp_path, capsys):
    bogus = tmp_path / "notes.tflite"
    bogus.write_text("not a model")
    assert cli.main(["bench", str(bogus), "--frames", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "notes.tflite" in err and "Traceback" not in err


def test_bench_measures_the_frame_step_edge_run_runs():
    """End to end: the bench's ``ours`` pipeline and ``edge run``'s LiveLoop, on the same frames of the
    same (deterministic) source, find the same detections frame by frame, through the same step."""
    import edge.bench.pipelines as pipelines
    import edge.live.loop as loop
    from edge.detector.detector import Detector
    from edge.detector.stages import StageTimes
    from edge.live.sinks import Sink
    from edge.live.sources import open_source

    assert pipelines.run_frame is loop.run_frame

    class Recorder(Sink):
        def __init__(self):
            self.frames = {}

        def write(self, frame, detections, annotated):
            self.frames[frame.seq] = detections.to_list(decimals=2)

    detector = Detector(score_threshold=0.3, num_threads=2)  # the bundled demo model: it finds the shapes
    frames = 30
    live, bench = Recorder(), Recorder()
    loop.LiveLoop(detector, open_source("synthetic:320x240"), [live], max_frames=frames, stats_every=0,
                  rss_every=0).run()
    ours = pipelines.OursLoop(detector, open_source("synthetic:320x240"), [bench])
    times = StageTimes(STAGES, capacity=frames)
    try:
        for _ in range(frames):
            assert ours.frame(times)
    finally:
        ours.close()
    assert all(times.count(stage) == frames for stage in STAGES)
    assert sorted(bench.frames) == sorted(live.frames) and len(live.frames) == frames
    assert bench.frames == live.frames
    assert any(live.frames.values())  # the model found shapes, so boxes were compared


def test_auto_threads_choose_ours_end_to_end_and_compare_the_baseline_at_its_best():
    """The default: ours measures every candidate thread count on real frames and keeps the faster;
    the baseline runs at each candidate and the fastest is the one the ratios use."""
    from edge.detector.threads import thread_candidates
    from edge.models import DEMO_MODEL

    candidates = thread_candidates()
    settings = BenchSettings(models=[DEMO_MODEL], source="synthetic:320x240", frames=20, warmup=3,
                             mem_frames=5, rounds=2, rss_every=4, traced_warmup=5)
    assert settings.threads == "auto"
    (r,) = run_bench(settings, progress=False)["models"]
    usual = r["usual"]
    assert set(usual["fps_by_threads"]) == {str(c) for c in candidates}
    assert usual["fps"] == pytest.approx(max(usual["fps_by_threads"].values()), rel=1e-3)
    assert r["runtime"]["bare_threads"] == candidates[0]
    if len(candidates) > 1:
        from edge.detector.threads import layout_candidates

        auto = r["runtime"]["threads_auto"]
        layouts = {layout.key: layout for layout in layout_candidates()}
        assert set(auto["fps_by_layout"]) == set(layouts), "every thread count, and two detectors in turn"
        chosen = layouts[auto["chosen"]]
        assert (r["runtime"]["threads"], r["runtime"]["detectors"]) == (chosen.threads, chosen.detectors)
        assert (auto["threads"], auto["detectors"]) == (chosen.threads, chosen.detectors)
