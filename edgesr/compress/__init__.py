"""Compression stages: plain functions with keyword-only options that return a new model.

Each stage lives in its own module (``prune``: structured channel pruning, ...); see DESIGN.md 2.5.
"""
