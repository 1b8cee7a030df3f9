"""Reads run directories back: the pure data model (`records`), tables and the published numbers
(`report`, `references`), figures, the TensorBoard dashboard, and the why lab's results as
`results.csv` reads them (`analysis_results`). Never imports JAX or the training code.
"""
