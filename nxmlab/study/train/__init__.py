"""One run, from its config to its finished folder in the results store.

* :mod:`~nxmlab.study.train.config`: what to run (:class:`RunConfig`, ``TrainingArguments``
  with nxmlab's defaults), parsed and checked once into a :class:`RunSpec`, whose
  ``canonical()`` fields make the config hash in every run folder's name;
* :mod:`~nxmlab.study.train.methods`: the method registry: every method's start point,
  training and prune steps, mask rule and options, declared once; nothing else branches on
  a method's name;
* :mod:`~nxmlab.study.train.hooks`: the method-specific part of a training phase (ADMM's
  state and dynamics, SR-STE, learned masks);
* :mod:`~nxmlab.study.train.spec`: :class:`Spec`, the view of a run the registry and the
  hooks read (imports go ``config`` -> ``methods`` -> ``hooks`` -> ``spec``);
* :mod:`~nxmlab.study.train.recipe`: :func:`run_experiment`, one run through the registry's
  steps, with checkpoints, resumes and the records it writes;
* :mod:`~nxmlab.study.train.distributed`: runs under ``torchrun``;
  :mod:`~nxmlab.study.train.timing`: phase wall time across resumes;
  :mod:`~nxmlab.study.train.progress`: progress lines where nxmlab trains for the user.
"""
