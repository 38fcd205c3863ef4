"""``edge bench``: settings, the pipelines compared (ours, the baseline, bare invoke), memory profiling, reports."""
