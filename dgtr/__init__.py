"""dgtr — Dexterous Grasp Transformer, CPU-first."""
__version__ = "0.1.0"


def __getattr__(name):
    # dgtr.load imports torch and the model lazily: `import dgtr` stays instant for the CLI and tools
    if name == "load":
        from .predict import load
        return load
    raise AttributeError(f"module 'dgtr' has no attribute {name!r}")
