"""Prediction engines: objects with `predict_proba(rows) -> probabilities`, and the check between them.

LightGBM's C API through ctypes (lgbm_capi) serves first; compiled trees
(compiled_trees: the model text parsed by lgbm_text, turned into C by codegen,
built with gcc by gcc_build) replace it only when `verify` finds them equal.
Nothing here knows about S3, caches or HTTP: this layer imports no other part
of model_serving (loading and http import it).
"""
