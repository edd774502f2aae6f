"""The RS-vs-detectron2 comparison of ``benchmarks/compare_to_detectron2.py``, one job a module.

The protocol (learning rate chosen on held-out train images, seeds at the chosen rate,
learning curves) is described in the docstring of that entry script. Here:

* :mod:`.layout`: what is compared and where things go: regimes, datasets, pairs and their
  configs, run names, output folders, checkpoint files;
* :mod:`.holdout`: the fit / holdout cut of a train split and its registration;
* :mod:`.results`: the result JSONs: atomic writes, reading, the metrics in them, the
  learning rate a grid chooses;
* :mod:`.worker`: one run (``--run-one``) or one learning curve (``--curve-one``), in its
  own subprocess;
* :mod:`.planner`: the run specs and the jobs of an invocation, done or not;
* :mod:`.resume`: whether existing results may stand for the planned runs;
* :mod:`.estimate`: the time estimate;
* :mod:`.driver`: runs the plan, model by model, one subprocess a job;
* :mod:`.report`: results.csv, results.md and the curve plots.

The machine and version record comes from ``benchmarks/machine.py``, shared by every
benchmark.
"""
