"""The experiments: presets, the runs each study trains, and the choices made from them.

* :mod:`~nxmlab.study.studies.presets`: the study presets (``smoke``, ``quick``, ``cpu``,
  ``protocol``, ``paper``...); :mod:`~nxmlab.study.studies.runs`: a preset's runs, study by
  study;
* the studies' rules: :mod:`~nxmlab.study.studies.tuning` (the dense baseline per task),
  :mod:`~nxmlab.study.studies.selection` (settings chosen on held-out data),
  :mod:`~nxmlab.study.studies.convergence` (ADMM's convergence and default setting);
* :mod:`~nxmlab.study.studies.cost`: a preset's projected wall time;
* :mod:`~nxmlab.study.studies.notebook`: the notebooks' setup, and the one place they train.
"""
