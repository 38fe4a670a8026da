"""nxmlab's benchmarks: ``python -m bench [--quick] [--only projection,admm,learned,kd,study,padding]``.

Each benchmark writes ``bench/results/<name>.json`` (machine info, configuration, raw
medians, ratios, targets and notes) and prints a summary. Every figure is a ratio
against a baseline timed in the same process and run, in alternation, after warm-up;
see ``bench/README.md``.
"""

#: ``--only`` names -> benchmark modules, in the order they run (projection last: it
#: changes glibc's allocator settings for the rest of the process).
BENCHMARKS = {"admm": "admm_overhead", "learned": "learned_overhead", "kd": "kd_teacher", "study": "study_cost",
              "padding": "padding", "projection": "projection"}
