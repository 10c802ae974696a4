"""binome: a high-availability virtualization cluster for small sites."""

__version__ = "0.1.0"
