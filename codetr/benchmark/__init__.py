"""``codetr bench``: model-only latency, throughput and peak memory of exported artifacts and the
eager model, and end-to-end time per image (decode, pre-process, model, post-process).

:func:`~codetr.benchmark.runner.run_benchmark` measures; :mod:`codetr.benchmark.report` writes
the table, JSON and plot; :mod:`codetr.benchmark.measure` holds how each number is taken.
"""
