"""Datasets. ``toolkit.data.toy2d``: 2-D toy distributions (moons, 8 Gaussians, checkerboard)."""

from toolkit.data import toy2d

__all__ = ["toy2d"]
