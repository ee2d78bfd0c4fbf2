"""Benchmarks of the organization lookup, key writes, cold start and layer size.

Run with ``make bench`` (``bench/run.py``); see ``bench/README.md``.
"""
