"""Everything that computes numbers: config, data, models, optimizers and the compiled training
programs (`engine`), plus what they need of the machine (`runtime`, `parallel`, `placement`).

Nothing here knows about run directories, sweeps or reports; the only files it writes are
checkpoints (`checkpoint`) and downloaded datasets (`download`).
"""
