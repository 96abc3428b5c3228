"""The embedded llama.cpp engine: one thread per model context, batched decoding, prefix forks.

Only this package imports llama_cpp.
"""
