"""resexp: measure why residual networks can be made deep.

One path, top to bottom: config -> data -> model -> train loop -> run directory
-> sweep aggregation -> dashboards.
"""

__version__ = "0.1.0"
