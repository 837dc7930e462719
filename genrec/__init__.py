"""Generative recommender: data, models, training, evaluation and the PyTorch reference."""

__version__ = "0.1.0"
