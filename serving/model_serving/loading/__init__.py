"""Making a model version servable: memory, then the disk cache, then S3, every file verified.

loader (single-flight, the three tiers) reads through disk_cache and s3_source,
turns verified files into model_files.ModelContent, and hands out
served_model.ServedModel objects predicting through an engine. engine_swap
puts compiled trees in place of the C API once they pass the engines' verifier.
Imports engines, never http.
"""
