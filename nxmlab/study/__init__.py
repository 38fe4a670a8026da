"""The study layer: GLUE data, the results store, the method registry and recipe,
presets, result frames, plots, notebooks and the ``nxmlab`` command line.

It uses the method layer (:mod:`nxmlab.nxm`, :mod:`nxmlab.admm`, :mod:`nxmlab.masking`,
...) and is never imported by it.  Modules, bottom up:

* :mod:`~nxmlab.study.data`, :mod:`~nxmlab.study.metrics`, :mod:`~nxmlab.study.models`:
  GLUE tasks and metrics, model loading;
* :mod:`~nxmlab.study.store`: run folders and every results file name;
* :mod:`~nxmlab.study.methods`: the method registry; :mod:`~nxmlab.study.hooks`: phase hooks;
* :mod:`~nxmlab.study.config`: run configs, parsed once; :mod:`~nxmlab.study.recipe`: one run;
  :mod:`~nxmlab.study.distributed`: multi-process runs (``torchrun``);
  :mod:`~nxmlab.study.exporting`: a run as a Hugging Face folder (``nxmlab export``);
* :mod:`~nxmlab.study.presets`: study presets;
* :mod:`~nxmlab.study.frames`: tidy result frames; :mod:`~nxmlab.study.plots` and
  :mod:`~nxmlab.study.maskplots`: figures;
* :mod:`~nxmlab.study.notebook`: the notebooks' setup; :mod:`~nxmlab.study.reproduce`,
  :mod:`~nxmlab.study.verify`, :mod:`~nxmlab.study.cli`.
"""
