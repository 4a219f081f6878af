"""kaie-analytics: a self-hostable implementation of the kaie Analytics API."""

__version__ = "0.1.0"
