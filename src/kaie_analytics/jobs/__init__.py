"""Asynchronous report and export jobs: the worker, the renderers, the exporters."""
