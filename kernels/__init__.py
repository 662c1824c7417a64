"""Pallas kernels for the hot paths, each tested against a plain reference.

Kernels import nothing from the layers above them (attention/, moe/, models/):
the oracles they are checked against are the tests' to import.
"""
