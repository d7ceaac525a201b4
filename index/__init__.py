"""Embedding and indexing layer: encoders, faiss indexes, kNN graphs, projection, coverage, diversity.

Knows nothing of `curate`; everything here takes arrays (or paths) in and gives arrays out.
"""
