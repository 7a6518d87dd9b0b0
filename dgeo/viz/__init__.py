"""Layer 4: pictures of localization results, drawn with OpenCV (no plotting library needed)."""

from dgeo.viz.plots import plot_localization

__all__ = ["plot_localization"]
