"""Kept only for models registered before the package had layers (see `inference`). Nothing imports it."""
