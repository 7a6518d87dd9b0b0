"""Layer 4: pictures of localization results, drawn with OpenCV (no plotting library needed):
top-down maps (:mod:`.plots`), trajectories (:mod:`.trajectory`), point clouds and flow
pictures of scene-coordinate outputs (:mod:`.clouds`)."""

from dgeo.viz.clouds import (
    coords_to_cloud,
    flow_color_wheel,
    flow_to_color,
    read_ply,
    scalar_colors,
    write_ply,
    write_png,
)
from dgeo.viz.plots import plot_localization
from dgeo.viz.trajectory import plot_trajectory

__all__ = [
    "coords_to_cloud",
    "flow_color_wheel",
    "flow_to_color",
    "plot_localization",
    "plot_trajectory",
    "read_ply",
    "scalar_colors",
    "write_ply",
    "write_png",
]
