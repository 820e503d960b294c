"""dgtr — Dexterous Grasp Transformer, CPU-first."""
__version__ = "0.1.0"
