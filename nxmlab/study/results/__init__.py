"""The results store and what reads it.

* :mod:`~nxmlab.study.results.store`: run folders and every results file name
  (``config.json``, ``metrics.json``, ``predictions.parquet``, ``masks.npz``...), written
  atomically; the only module that knows them;
* :mod:`~nxmlab.study.results.integrity`: checksums and file checks;
  :mod:`~nxmlab.study.results.verify`: ``nxmlab verify``, every file of every run;
* :mod:`~nxmlab.study.results.frames`: the runs as tidy pandas frames (scores, dynamics,
  mask distances), seeds averaged in one place; ``nxmlab table``;
* :mod:`~nxmlab.study.results.stats`: paired bootstrap intervals from the stored
  predictions.
"""
