"""Benchmarks for flask-diaglog, run on demand: ``python -m benchmarks [--quick] [name ...]``.

Never part of the test suite. Every table compares variants measured in the same run, interleaved
in rounds (each round runs every variant once, in a rotating order), and reports medians, so the
ratios stay fair on a shared, noisy machine.
"""
