"""Scaffolding for the test suite and the scripts: smoke recipes, synthetic datasets, the
anomalib-Engine parity check. Not part of the user API: names here may change at any time.
"""
