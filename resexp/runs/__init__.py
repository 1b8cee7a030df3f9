"""One run is one directory: its id and lock (`store`), what it ran on (`provenance`), its
TensorBoard events (`tblog`), and the host loop that trains a group of runs into them (`train`).
"""
