"""Neuroformer: a multimodal generative simulator of neural population activity."""
__version__ = "0.1.0"
