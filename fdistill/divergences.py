"""Compatibility re-export: the f-divergences live in :mod:`fdistill.core.divergences`."""

from fdistill.core.divergences import Divergence, get, names, register

__all__ = ["Divergence", "get", "names", "register"]
