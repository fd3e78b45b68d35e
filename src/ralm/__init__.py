"""ralm: the Real-time Attention-based Look-alike Model (Liu et al., KDD 2019)."""

__version__ = "0.1.0"
