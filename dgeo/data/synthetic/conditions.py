"""The appearance conditions of the synthetic world, named like RobotCar Seasons' conditions.

A :class:`Condition` holds every parameter of :func:`dgeo.data.synthetic.appearance.shade` and
:func:`dgeo.data.synthetic.appearance.finish` for one condition: ambient light, sun, sky,
lamps and headlights, windows, season, snow cover, wetness, fog, precipitation, exposure and
sensor noise. :data:`CONDITIONS` defines the ten named ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from dgeo.errors import InputError

RGB = tuple[float, float, float]
PRECIPITATION_KINDS = ("none", "rain", "snow")
SEASONS = ("spring", "summer", "autumn", "winter")


@dataclass(frozen=True)
class Condition:
    """One appearance condition. Colours are linear RGB; angles are radians.

    Attributes:
        name: the RobotCar-style name, e.g. ``"night-rain"``.
        ambient_color, ambient_intensity: sky / overcast light reaching every surface (outdoors
            weighted towards upward-facing normals; indoors scaled by the daylight through
            windows).
        sun_elevation, sun_azimuth: direction *towards* the sun; azimuth from world ``+x``
            towards ``+y``, elevation above the horizon (world ``z`` is up).
        sun_color, sun_intensity: direct sunlight (Lambert ``N.L``, no shadows); 0 for none.
        sun_disc: brightness of the visible sun disc and its glow in the sky; 0 hides it.
        sky_zenith, sky_horizon: sky radiance gradient by the ray's ``z``.
        color_temperature: white-balance grade of the camera in kelvin (6500 neutral, lower
            warmer, higher cooler).
        lamps_on, lamp_intensity: street lamps (the scene's point lights outdoors) and their
            scale on ``Scene.light_color``. Indoor lights are always on.
        window_light: radiance of windows lit from inside (a fixed share of window quads);
            0 leaves windows dark.
        headlights, headlight_intensity, headlight_angle: the car's headlights, a cone of
            half-angle ``headlight_angle`` along the camera's optical axis (outdoors only).
        precipitation, precipitation_density, precipitation_brightness: ``"none"``, ``"rain"``
            (streaks) or ``"snow"`` (flakes); density 1 is a heavy shower; brightness is the
            linear radiance of the occluders after exposure.
        season: vegetation colour: ``"spring"``, ``"summer"`` (lush green), ``"autumn"``
            (yellow-orange) or ``"winter"`` (bare, brown-grey).
        snow_cover: 0..1 snow on upward-facing outdoor surfaces (roads get slush).
        wetness: 0..1 wet outdoor ground: darker albedo, puddles, sky and lamp reflections.
        fog_density: extinction in 1/m towards the horizon colour (outdoors).
        exposure_key, max_gain, exposure_ev: auto exposure brings the log-average luminance to
            ``exposure_key`` with a gain of at most ``max_gain``, then adds a uniform random
            offset from ``exposure_ev`` (stops).
        read_noise, shot_noise: sensor noise after exposure: standard deviation
            ``sqrt(read_noise^2 + shot_noise * x)`` for linear signal ``x``.
        blur_sigma: Gaussian blur in pixels of the final image (rain on the lens); 0 for none.
    """

    name: str
    ambient_color: RGB
    ambient_intensity: float
    sun_elevation: float
    sun_azimuth: float
    sun_color: RGB
    sun_intensity: float
    sun_disc: float
    sky_zenith: RGB
    sky_horizon: RGB
    color_temperature: float = 6500.0
    lamps_on: bool = False
    lamp_intensity: float = 0.0
    window_light: float = 0.0
    headlights: bool = False
    headlight_intensity: float = 0.0
    headlight_angle: float = math.radians(22.0)
    precipitation: Literal["none", "rain", "snow"] = "none"
    precipitation_density: float = 0.0
    precipitation_brightness: float = 0.0
    season: Literal["spring", "summer", "autumn", "winter"] = "autumn"
    snow_cover: float = 0.0
    wetness: float = 0.0
    fog_density: float = 0.0
    exposure_key: float = 0.18
    max_gain: float = 8.0
    exposure_ev: tuple[float, float] = (-0.25, 0.25)
    read_noise: float = 0.002
    shot_noise: float = 0.0005
    blur_sigma: float = 0.0

    def __post_init__(self):
        if self.precipitation not in PRECIPITATION_KINDS:
            raise InputError(
                f"Condition {self.name!r}: precipitation must be one of {PRECIPITATION_KINDS}, "
                f"got {self.precipitation!r}."
            )
        if self.season not in SEASONS:
            raise InputError(
                f"Condition {self.name!r}: season must be one of {SEASONS}, got {self.season!r}."
            )
        for f in ("snow_cover", "wetness"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise InputError(f"Condition {self.name!r}: {f} must lie in [0, 1].")
        for f in fields(self):
            v = getattr(self, f.name)
            signed = f.name in ("sun_elevation", "sun_azimuth")
            if isinstance(v, float) and (not math.isfinite(v) or (v < 0 and not signed)):
                raise InputError(f"Condition {self.name!r}: {f.name} must be finite and >= 0.")
        lo, hi = self.exposure_ev
        if not lo <= hi or self.max_gain <= 0 or self.exposure_key <= 0:
            raise InputError(
                f"Condition {self.name!r}: need exposure_ev lo <= hi and positive "
                "max_gain and exposure_key."
            )

    @property
    def sun_direction(self) -> tuple[float, float, float]:
        """Unit vector towards the sun in the world frame (``z`` up)."""
        ce = math.cos(self.sun_elevation)
        return (
            ce * math.cos(self.sun_azimuth),
            ce * math.sin(self.sun_azimuth),
            math.sin(self.sun_elevation),
        )


def _rad(deg: float) -> float:
    return math.radians(deg)


_NIGHT = dict(
    ambient_color=(0.35, 0.4, 0.6),
    ambient_intensity=0.004,
    sun_elevation=_rad(-20.0),
    sun_azimuth=0.0,
    sun_color=(0.0, 0.0, 0.0),
    sun_intensity=0.0,
    sun_disc=0.0,
    sky_zenith=(0.0008, 0.001, 0.0022),
    sky_horizon=(0.012, 0.008, 0.005),
    color_temperature=6500.0,
    lamps_on=True,
    lamp_intensity=1.0,
    window_light=0.4,
    headlights=True,
    headlight_intensity=8.0,
    season="autumn",
    exposure_key=0.03,
    max_gain=2.5,
    exposure_ev=(-0.3, 0.3),
    read_noise=0.012,
    shot_noise=0.004,
)

#: The appearance conditions, keyed by name; ``"overcast-reference"`` is the mapping condition.
CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition(
            name="overcast-reference",
            ambient_color=(0.86, 0.88, 0.92),
            ambient_intensity=1.0,
            sun_elevation=_rad(30.0),
            sun_azimuth=_rad(200.0),
            sun_color=(1.0, 0.97, 0.92),
            sun_intensity=0.15,
            sun_disc=0.0,
            sky_zenith=(0.72, 0.75, 0.8),
            sky_horizon=(0.92, 0.93, 0.95),
            season="autumn",
            wetness=0.1,
            fog_density=0.004,
            exposure_key=0.2,
        ),
        Condition(
            name="sun",
            ambient_color=(0.45, 0.55, 0.8),
            ambient_intensity=0.55,
            sun_elevation=_rad(38.0),
            sun_azimuth=_rad(135.0),
            sun_color=(1.0, 0.93, 0.8),
            sun_intensity=2.2,
            sun_disc=40.0,
            sky_zenith=(0.12, 0.28, 0.75),
            sky_horizon=(0.55, 0.68, 0.9),
            color_temperature=6000.0,
            season="spring",
            fog_density=0.002,
            exposure_key=0.17,
        ),
        Condition(
            name="dusk",
            ambient_color=(0.5, 0.42, 0.55),
            ambient_intensity=0.16,
            sun_elevation=_rad(3.0),
            sun_azimuth=_rad(250.0),
            sun_color=(1.0, 0.5, 0.2),
            sun_intensity=0.6,
            sun_disc=30.0,
            sky_zenith=(0.035, 0.045, 0.12),
            sky_horizon=(0.22, 0.17, 0.24),
            color_temperature=4300.0,
            lamps_on=True,
            lamp_intensity=0.7,
            window_light=0.2,
            season="autumn",
            fog_density=0.006,
            exposure_key=0.14,
            max_gain=6.0,
            read_noise=0.005,
            shot_noise=0.0015,
        ),
        Condition(name="night", **_NIGHT),
        Condition(
            name="night-rain",
            **{
                **_NIGHT,
                "sky_horizon": (0.018, 0.012, 0.008),
                "precipitation": "rain",
                "precipitation_density": 0.6,
                "precipitation_brightness": 0.25,
                "wetness": 0.95,
                "fog_density": 0.03,
                "blur_sigma": 0.7,
            },
        ),
        Condition(
            name="rain",
            ambient_color=(0.6, 0.63, 0.68),
            ambient_intensity=0.5,
            sun_elevation=_rad(30.0),
            sun_azimuth=_rad(180.0),
            sun_color=(1.0, 1.0, 1.0),
            sun_intensity=0.0,
            sun_disc=0.0,
            sky_zenith=(0.32, 0.34, 0.37),
            sky_horizon=(0.45, 0.47, 0.5),
            color_temperature=6900.0,
            precipitation="rain",
            precipitation_density=1.0,
            precipitation_brightness=0.55,
            season="autumn",
            wetness=0.9,
            fog_density=0.015,
            exposure_key=0.15,
            read_noise=0.003,
            shot_noise=0.001,
            blur_sigma=0.8,
        ),
        Condition(
            name="snow",
            ambient_color=(0.88, 0.9, 0.96),
            ambient_intensity=0.9,
            sun_elevation=_rad(20.0),
            sun_azimuth=_rad(160.0),
            sun_color=(1.0, 1.0, 1.0),
            sun_intensity=0.05,
            sun_disc=0.0,
            sky_zenith=(0.7, 0.72, 0.76),
            sky_horizon=(0.85, 0.86, 0.88),
            color_temperature=7600.0,
            precipitation="snow",
            precipitation_density=1.0,
            precipitation_brightness=1.3,
            season="winter",
            snow_cover=0.9,
            fog_density=0.025,
            exposure_key=0.26,
            read_noise=0.003,
            shot_noise=0.001,
        ),
        Condition(
            name="overcast-winter",
            ambient_color=(0.8, 0.83, 0.9),
            ambient_intensity=0.75,
            sun_elevation=_rad(12.0),
            sun_azimuth=_rad(170.0),
            sun_color=(1.0, 0.95, 0.9),
            sun_intensity=0.05,
            sun_disc=0.0,
            sky_zenith=(0.62, 0.65, 0.7),
            sky_horizon=(0.8, 0.82, 0.85),
            color_temperature=7300.0,
            season="winter",
            wetness=0.3,
            fog_density=0.008,
            exposure_key=0.18,
        ),
        Condition(
            name="overcast-summer",
            ambient_color=(0.88, 0.89, 0.88),
            ambient_intensity=1.05,
            sun_elevation=_rad(55.0),
            sun_azimuth=_rad(180.0),
            sun_color=(1.0, 0.98, 0.92),
            sun_intensity=0.35,
            sun_disc=0.0,
            sky_zenith=(0.68, 0.72, 0.78),
            sky_horizon=(0.88, 0.9, 0.92),
            color_temperature=6200.0,
            season="summer",
            fog_density=0.003,
            exposure_key=0.2,
        ),
        Condition(
            name="dawn",
            ambient_color=(0.5, 0.5, 0.65),
            ambient_intensity=0.18,
            sun_elevation=_rad(4.0),
            sun_azimuth=_rad(100.0),
            sun_color=(1.0, 0.62, 0.38),
            sun_intensity=0.55,
            sun_disc=25.0,
            sky_zenith=(0.06, 0.09, 0.2),
            sky_horizon=(0.32, 0.27, 0.32),
            color_temperature=4800.0,
            lamps_on=True,
            lamp_intensity=0.5,
            window_light=0.1,
            season="winter",
            wetness=0.2,
            fog_density=0.01,
            exposure_key=0.15,
            max_gain=6.0,
            read_noise=0.004,
            shot_noise=0.0012,
        ),
    )
}

#: Condition names in RobotCar Seasons' order, the reference first.
CONDITION_NAMES: tuple[str, ...] = tuple(CONDITIONS)


def get_condition(name: str | Condition) -> Condition:
    """The :class:`Condition` called ``name`` (a :class:`Condition` passes through).

    Raises:
        InputError: unknown name; the message lists the valid ones.
    """
    if isinstance(name, Condition):
        return name
    try:
        return CONDITIONS[name]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown appearance condition {name!r}; use one of {', '.join(CONDITIONS)}."
        ) from None
