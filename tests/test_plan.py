"""``edge plan``: the arena planner against the interpreter's own arena, the breakdown, --ram, bad files,
and --measure on the bundled demo model within the 10% target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import EdgeError
from edge.models import DEMO_MODEL
from edge.plan.arena import KERNELS_BUILTIN, plan_arena
from edge.plan.baseline import load_baseline
from edge.plan.components import Setup
from edge.plan.graph import read_graph
from edge.plan.predict import predict

MIB = 2**20


def _interpreter_arena(model: Path, graph) -> tuple[int, dict[int, int]]:
    """Extent and per-tensor offsets of a no-delegate LiteRT interpreter's arena (from tensor addresses)."""
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_mod.Interpreter(
        model_path=str(model), num_threads=1,
        experimental_op_resolver_type=interpreter_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    file_tensors = [t for t in graph.tensors if not t.temporary]
    starts = {}
    for index in range(len(interpreter.get_tensor_details())):
        if index < len(file_tensors) and file_tensors[index].constant:
            continue
        array = interpreter.tensor(index)()
        if array.nbytes:
            starts[index] = (array.__array_interface__["data"][0], array.nbytes)
    base = min(s for s, _ in starts.values())
    extent = max(s + n for s, n in starts.values()) - base
    return extent, {i: s - base for i, (s, _) in starts.items() if i < len(file_tensors)}


def _run_cli(argv: list[str], monkeypatch) -> int:
    import edge.cli

    monkeypatch.setitem(edge.cli.COMMANDS, "plan", ("edge.commands.plan", "predict edge run's peak RSS"))
    return edge.cli.main(argv)


def _schema():
    return pytest.importorskip("ai_edge_litert.schema_py_generated")


def _tiny_model(path: Path, op: str = "ADD", custom: str | None = None) -> Path:
    """A float [1, 8] -> [1, 8] model: x + c, then a RESHAPE to [8] (in place), as a non-detector."""
    import flatbuffers

    s = _schema()
    model = s.ModelT()
    model.version = 3
    codes = []
    for name in ([op, "RESHAPE"]):
        code = s.OperatorCodeT()
        if custom and name == op:
            code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
            code.customCode = custom
        else:
            code.builtinCode = getattr(s.BuiltinOperator, name)
            code.deprecatedBuiltinCode = min(code.builtinCode, 127)
        code.version = 1
        codes.append(code)
    model.operatorCodes = codes
    empty, weights, shape = s.BufferT(), s.BufferT(), s.BufferT()
    weights.data = list(np.arange(8, dtype=np.float32).tobytes())
    shape.data = list(np.array([8], np.int32).tobytes())
    model.buffers = [empty, weights, shape]

    def tensor(name, dims, buffer=0, type_=s.TensorType.FLOAT32):
        t = s.TensorT()
        t.name, t.shape, t.buffer, t.type = name, dims, buffer, type_
        return t

    sg = s.SubGraphT()
    sg.tensors = [tensor("x", [1, 8]), tensor("c", [1, 8], 1), tensor("sum", [1, 8]),
                  tensor("shape", [1], 2, s.TensorType.INT32), tensor("y", [8])]
    add, reshape = s.OperatorT(), s.OperatorT()
    add.opcodeIndex, add.inputs, add.outputs = 0, [0, 1], [2]
    reshape.opcodeIndex, reshape.inputs, reshape.outputs = 1, [2, 3], [4]
    sg.operators = [add, reshape]
    sg.inputs, sg.outputs = [0], [4]
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


# ---- the arena planner against the interpreter --------------------------------------------------

@pytest.mark.parametrize("which", ["fixture", "demo"])
def test_arena_plan_is_the_interpreters_arena(which, request):
    """Tolerance: exact. Planned with TFLite's own kernels' scratch tensors (the builtin CONV_2D
    im2col buffer), the plan equals the no-delegate interpreter's arena to the byte, and every tensor
    sits where the interpreter put it except equal-sized tensors born at the same op (TFLite's sort is
    not stable, so their order is arbitrary; the size does not depend on it). Without those scratch
    tensors (XNNPACK runs those convolutions in edge run) the plan may only be smaller, by at most the
    im2col buffers."""
    model = request.getfixturevalue("ssd_model_path") if which == "fixture" else DEMO_MODEL
    graph = read_graph(model)
    builtin = plan_arena(graph, kernels=KERNELS_BUILTIN)
    extent, offsets = _interpreter_arena(model, graph)
    assert builtin.size == extent
    moved = [i for i, off in offsets.items() if builtin.offset_of(i) != off]
    for index in moved:
        twins = [j for j in moved if j != index and graph.tensors[j].nbytes == graph.tensors[index].nbytes]
        assert twins, f"tensor {index} ({graph.tensors[index].name}) is not where the interpreter put it"
    assert len(moved) <= 0.05 * len(offsets)
    xnnpack = plan_arena(graph)
    assert xnnpack.peak_live <= xnnpack.size <= extent
    assert extent - xnnpack.size <= 0.05 * extent
    # Reuse matters: the plan is a fraction of the tensors' sum and at most 1% above the live lower bound.
    assert xnnpack.size < 0.5 * xnnpack.planned_bytes
    assert xnnpack.size <= 1.01 * xnnpack.peak_live


def test_in_place_reshape_and_tiny_model_arena(tmp_path):
    model = _tiny_model(tmp_path / "tiny.tflite")
    graph = read_graph(model)
    plan = plan_arena(graph)
    assert plan.shared == {}  # the RESHAPE's output is a graph output: never shared
    extent, _ = _interpreter_arena(model, graph)
    assert plan.size == extent


# ---- the breakdown ------------------------------------------------------------------------------

@pytest.mark.parametrize("cameras,sinks,threads", [(1, (), 2), (3, ("json", "video", "preview"), 2), (2, ("video",), "auto")])
def test_breakdown_adds_up(cameras, sinks, threads):
    setup = Setup(1280, 720, cameras, threads, sinks, cores=2)
    p = predict(DEMO_MODEL, setup)
    assert sum(c.bytes for c in p.components) == p.peak
    assert sum(c.bytes for c in p.components if c.group != "transient") == p.steady
    assert all(c.bytes >= 0 for c in p.components)
    assert p.peak == max(p.steady, p.before_loops, p.peak)
    frame = 1280 * 720 * 3
    ring = next(c for c in p.components if c.name == "capture ring frames")
    assert ring.bytes == cameras * 2 * frame
    canvas = [c for c in p.components if c.name == "annotation canvas"]
    assert (canvas[0].bytes if canvas else 0) == (cameras * frame if {"video", "preview"} & set(sinks) else 0)
    graph = read_graph(DEMO_MODEL)
    arena = next(c for c in p.components if c.name == "arena")
    assert arena.bytes == plan_arena(graph).size
    more = predict(DEMO_MODEL, Setup(1280, 720, cameras + 1, threads, sinks, cores=2))
    assert more.steady > p.steady


def test_each_further_detector_is_another_interpreter_and_no_thread_switch_with_several_cameras(monkeypatch, capsys):
    one = predict(DEMO_MODEL, Setup(640, 480, 4, "auto", cores=2))
    two = predict(DEMO_MODEL, Setup(640, 480, 4, "auto", cores=2, detectors=2))
    interpreter = sum(c.bytes for c in one.components if c.group == "interpreter")
    interpreter += int(load_baseline()["coefficients"]["camera_fixed_bytes"])  # its thread, as a camera's
    further = next(c for c in two.components if c.name == "each further detector")
    assert further.bytes == interpreter and two.steady == one.steady + interpreter
    # edge run --config fixes its threads (no tuner): no second interpreter while switching
    def thread_switch(p):
        return "thread switch" in p.peak_when or any("thread switch" in note for note in p.notes)

    assert not thread_switch(one) and not thread_switch(two)
    assert thread_switch(predict(DEMO_MODEL, Setup(640, 480, 1, "auto", cores=2)))
    assert _run_cli(["plan", str(DEMO_MODEL), "--cameras", "2", "--detectors", "3"], monkeypatch) == 2
    assert "--detectors 3: more than the 2 cameras" in capsys.readouterr().err
    assert _run_cli(["plan", str(DEMO_MODEL), "--cameras", "2", "--detectors", "2"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "2 cameras, 2 detectors" in out and "each further detector" in out


def test_non_detector_gets_the_interpreter_part(tmp_path, monkeypatch, capsys):
    model = _tiny_model(tmp_path / "adder.tflite")
    p = predict(model, Setup())
    assert not p.detector["detector"] and "not an SSD detector" in p.notes[0]
    assert {c.group for c in p.components} == {"baseline", "interpreter"}
    assert _run_cli(["plan", str(model)], monkeypatch) == 0
    assert "not an SSD detector" in capsys.readouterr().out


# ---- --ram --------------------------------------------------------------------------------------

def _candidate(tmp_path: Path, source: Path, name: str, map_value: float | None) -> Path:
    model = tmp_path / f"{name}.tflite"
    shutil.copyfile(source, model)
    if map_value is not None:
        report = {"quantization": "int8-ptq", "models": {"int8-ptq": {"eval": {"map": map_value, "map50": map_value + 0.1}}}}
        (tmp_path / f"{name}.report.json").write_text(json.dumps(report))
    return model


def test_ram_picks_the_most_accurate_that_fits(tmp_path, ssd_model_path, monkeypatch, capsys):
    big = _candidate(tmp_path, ssd_model_path, "big_accurate", 0.30)
    small = _candidate(tmp_path, DEMO_MODEL, "small_less_accurate", 0.20)
    unranked = _candidate(tmp_path, DEMO_MODEL, "no_report", None)
    setup = ["--source", "640x480", "--threads", "2"]
    peaks = {Path(m["model"]).stem: m["peak"] for m in _plan_json([str(big), str(small), str(unranked)] + setup,
                                                                  tmp_path, monkeypatch)["models"]}
    assert peaks["big_accurate"] > peaks["small_less_accurate"]
    between = (peaks["big_accurate"] + peaks["small_less_accurate"]) // 2
    plenty = peaks["big_accurate"] + 64 * MIB
    too_little = min(peaks.values()) - MIB

    def pick(ram: int) -> dict:
        return _plan_json([str(big), str(small), str(unranked), "--ram", f"{ram // 1024}K"] + setup,
                          tmp_path, monkeypatch)["ram"]

    choice = pick(between)
    assert Path(choice["best"]).stem == "small_less_accurate"
    fits = {Path(c["model"]).stem: c["fits"] for c in choice["candidates"]}
    assert fits == {"big_accurate": False, "small_less_accurate": True, "no_report": True}
    margin = next(c["margin"] for c in choice["candidates"] if Path(c["model"]).stem == "small_less_accurate")
    assert margin == (between // 1024) * 1024 - peaks["small_less_accurate"]
    assert Path(pick(plenty)["best"]).stem == "big_accurate"
    assert pick(too_little)["best"] is None
    capsys.readouterr()
    assert _run_cli(["plan", str(big), str(small), "--ram", f"{between // MIB}M"] + setup, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "most accurate that fits: small_less_accurate.tflite" in out and "does not fit" in out


def _plan_json(argv: list[str], tmp_path: Path, monkeypatch) -> dict:
    out = tmp_path / "plan.json"
    assert _run_cli(["plan", *argv, "--json", str(out)], monkeypatch) == 0
    return json.loads(out.read_text())


def test_demo_report_map_is_read():
    p = predict(DEMO_MODEL, Setup(threads=2))
    written = json.loads(DEMO_MODEL.with_name(DEMO_MODEL.stem + ".report.json").read_text())
    int8 = written["models"]["int8-ptq"]["eval"]
    assert p.report and p.report["variant"] == "int8-ptq"
    assert p.report["map"] == pytest.approx(int8["map"]) and p.report["map50"] == pytest.approx(int8["map50"])
    assert 0 < p.report["map"] < p.report["map50"] <= 1


# ---- bad input ----------------------------------------------------------------------------------

def _unknown_custom(tmp_path: Path) -> Path:
    return _tiny_model(tmp_path / "custom.tflite", custom="NotARealOp")


def _unknown_builtin(tmp_path: Path) -> Path:
    s = _schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(_tiny_model(tmp_path / "b.tflite").read_bytes()), 0)
    model.operatorCodes[0].builtinCode = 4000
    model.operatorCodes[0].deprecatedBuiltinCode = 127
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "unknown_builtin.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.mark.parametrize("make,expect", [
    (lambda d: (d / "noise.tflite").write_bytes(bytes(range(256)) * 3) and d / "noise.tflite", "not a TFLite model"),
    (lambda d: (d / "cut.tflite").write_bytes(DEMO_MODEL.read_bytes()[:4096]) and d / "cut.tflite", "corrupt TFLite"),
    (lambda d: (d / "empty.tflite").write_bytes(b"") or d / "empty.tflite", "not a TFLite model"),
    (_unknown_custom, "unknown operator NotARealOp"),
    (_unknown_builtin, "unknown operator builtin code 4000"),
    (lambda d: d / "missing.tflite", "not found"),
])
def test_bad_file_is_one_line_exit_2(make, expect, tmp_path, monkeypatch, capsys):
    model = make(tmp_path)
    with pytest.raises(EdgeError):
        read_graph(model)
    assert _run_cli(["plan", str(DEMO_MODEL), str(model)], monkeypatch) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edge: error:") and expect in lines[0], captured.err
    assert captured.out == ""  # every file is checked before anything is printed


def test_json_never_overwrites_an_input(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.tflite"
    shutil.copyfile(DEMO_MODEL, model)
    assert _run_cli(["plan", str(model), "--json", str(model)], monkeypatch) == 2
    assert "is the input MODEL" in capsys.readouterr().err
    assert model.read_bytes() == DEMO_MODEL.read_bytes()
    assert _run_cli(["plan", str(model), "--ram", "lots"], monkeypatch) == 2


def test_baseline_says_what_it_was_measured_on():
    baseline = load_baseline()
    assert baseline["versions"].get("ai-edge-litert") and baseline["machine"]["machine"]
    co = baseline["coefficients"]
    assert 1.0 <= co["xnnpack_packed_ratio"] <= 1.5  # packed copies are at least the weights, plus padding
    assert {"json", "video", "preview"} <= set(co["sinks"])


# ---- --measure ----------------------------------------------------------------------------------

def test_measure_demo_within_target(tmp_path, monkeypatch, capsys):
    out = tmp_path / "measured.json"
    argv = ["plan", str(DEMO_MODEL), "--source", "640x480", "--threads", "2", "--measure", "--frames", "30",
            "--json", str(out)]
    assert _run_cli(argv, monkeypatch) == 0
    text = capsys.readouterr().out
    assert "peak RSS" in text and "measured" in text
    rows = {r["component"]: r for r in json.loads(out.read_text())["models"][0]["measured"]}
    assert abs(rows["peak RSS"]["error"]) <= 0.10, rows["peak RSS"]
    assert abs(rows["steady state"]["error"]) <= 0.10
    arena = rows["arena (no-delegate interpreter's own)"]
    assert arena["measured"] == arena["predicted"] == plan_arena(read_graph(DEMO_MODEL), kernels=KERNELS_BUILTIN).size
    # LiteRT maps the model: its resident pages are the file, not a copy.
    assert rows["weights resident (mapped file)"]["error"] == 0.0
