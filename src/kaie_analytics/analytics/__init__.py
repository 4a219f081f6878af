"""The analytics core: what every number means, above every engine."""
