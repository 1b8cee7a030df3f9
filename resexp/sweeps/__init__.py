"""A sweep: the plan (grid, cells, manifests) and its executors, in-process or a `--jobs` pool
(`plan`) and submitit, locally or on SLURM (`launch`). Runs only: reports are rebuilt from them.
"""
