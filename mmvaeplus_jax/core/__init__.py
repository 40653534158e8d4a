"""The maths: array types, densities, expert aggregation, bounds and estimators.

Pure functions of arrays (and of a model object passed in, read through the
contract of `models/base.py`); nothing here imports a higher floor.
"""
