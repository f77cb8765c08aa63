"""auq: alignment uncertainty quantification."""

__version__ = "0.1.0"
