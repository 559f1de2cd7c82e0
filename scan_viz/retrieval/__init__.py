"""Retrieval: the score matrix in blocks, exhaustive and two-stage search, gallery indexes."""
