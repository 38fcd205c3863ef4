"""``edge bench``: memory per frame and stage latency of edgekit's pipeline, the usual one and bare ``invoke()``.

Module map:

- :mod:`~edge.bench.settings`: :class:`~edge.bench.settings.BenchSettings`, what one call runs;
- :mod:`~edge.bench.pipelines`: the three loops compared (ours, the baseline, bare invoke);
- :mod:`~edge.bench.baseline`: the usual pipeline, as the common examples write it;
- :mod:`~edge.bench.memprofile`: heap growth and transient per frame (tracemalloc);
- :mod:`~edge.bench.run`: the warm-up, timed and traced phases, one model, every model;
- :mod:`~edge.bench.report`: JSON, the terminal table and summary, the markdown report;
- :mod:`~edge.bench.plots`: PNG plots (the only module that imports matplotlib);
- :mod:`~edge.bench.progress`: the progress bar.

``edge bench`` reports figures and ratios; it does not judge them. The project's own targets for
them live with the benchmark scripts (``benchmarks/targets.py``).
"""

OURS = "ours"
#: The key and label the baseline's figures are reported under (JSON, tables, plots).
BASELINE = "usual"
