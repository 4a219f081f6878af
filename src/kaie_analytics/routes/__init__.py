"""Thin route modules, one per endpoint family: parse, call a service, render."""
