"""vtn: a PyTorch reproduction of the Volume Tweening Network (Zhao et al., IEEE JBHI 2020)."""

__version__ = "0.1.0"
