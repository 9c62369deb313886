"""Ray sweeps of geomix: the paper's ablation (``ablation.py``) and the hyper-parameter search
(``search.py``).

Modules, each about one thing (``docs/architecture.md``):

* :mod:`sweeps.spec` - the sweep (:class:`~sweeps.spec.SweepSpec`) and each trial's config, resolved once;
* :mod:`sweeps.schema` - the sweep YAML as typed configs (``SweepFile``, ``SearchSettings``);
* :mod:`sweeps.space` - the search's define-by-run space;
* :mod:`sweeps.session` - Ray start-up, what a trial reserves, how many run at once;
* :mod:`sweeps.trainable` - the Tune trainable (in-process or Ray Train) and its hooks;
* :mod:`sweeps.searchers` - Optuna TPE (ASHA-stopped = PRUNED), ASHA, the study's storage;
* :mod:`sweeps.records` - trial statuses, ``trials`` / ``history`` rows, the results callback;
* :mod:`sweeps.runner` - run or resume a sweep, reconcile its rows;
* :mod:`sweeps.cli` - the scripts' shared arguments and printouts;
* :mod:`sweeps.tune_api` and :mod:`sweeps.raytrain` - the only modules that import ``ray.tune`` and
  ``ray.train`` (their APIs are renamed often).
"""
