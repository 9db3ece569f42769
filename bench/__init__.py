"""Benchmarks: figures, not tests. ``python -m bench`` (or ``make bench``) runs them.

Each benchmark is a module of this package with a ``run() -> dict`` that
measures linetap's code next to a peer in the same run and returns the
figures; :mod:`bench.__main__` lists the modules, prints their JSON and keeps
it in ``bench/results/<name>.json``. A benchmark never fails on a slow machine.
"""
