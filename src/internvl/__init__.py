"""internvl: run, convert and check InternVL models in plain PyTorch."""

__version__ = "0.1.0"
