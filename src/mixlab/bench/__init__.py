"""Benchmarks: every method x seeds under one fixed protocol, then one results table and plots.

    mixlab bench cifar10-quick                      # CPU: 7 methods x 3 seeds, ~5 min a run
    mixlab bench cifar10-full --out bench/full      # GPU: the AutoMix / RecursiveMix CIFAR setting

* :mod:`~mixlab.bench.protocols`: the protocol YAML files shipped in ``protocols/``; load, validate, list.
* :mod:`~mixlab.bench.runner`: plan the runs, run / resume / skip them (``--jobs`` subprocesses),
  then write the report.
* :mod:`~mixlab.bench.report`: ``results.csv`` and ``results.md`` (mean ± std over seeds, the
  comparison with vanilla).
* :mod:`~mixlab.bench.plots`: ``accuracy.png``, ``curves.png``, ``gallery.png``.
* :mod:`~mixlab.bench.command`: the ``mixlab bench`` subcommand (``add_parser``, ``run``).
"""
