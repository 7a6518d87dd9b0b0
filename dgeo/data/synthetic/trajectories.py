"""Camera poses in the synthetic world: ``look_at``, driving and handheld sequences, and random
viewpoints for mapping.

Every pose is ``cam_from_world`` with OpenCV axes (x right, y down, z forward) in the world frame
of :class:`~dgeo.data.synthetic.scene.Scene` (metres, z up). Orientations are built from a
heading (yaw, counter-clockwise seen from above), a pitch (positive looks up) and a roll about
the optical axis. Everything random is drawn from one explicit ``torch.Generator`` seeded with
``seed``, so a seed always gives the same poses, on every machine.

Motion is made of sums of sinusoids with random frequencies, amplitudes and phases: smooth (every
derivative bounded by the highest frequency), bounded by construction (so cameras stay inside the
walkable box without clamping) and cheap to evaluate for any number of frames at once.
"""

from __future__ import annotations

import math

import torch

from dgeo.data.synthetic.scene import Scene
from dgeo.errors import InputError
from dgeo.geometry import Pose
from dgeo.geometry.pose import ArrayLike, as_tensor

#: Height of a camera above the ground or floor (metres): cars and pedestrians, handheld.
STREET_HEIGHT = (1.5, 2.0)
ROOM_HEIGHT = (1.2, 1.8)
_DTYPE = torch.float64  # poses are built in float64 and returned in the scene's dtype


# ---------------------------------------------------------------------------------- orientation
def look_at(eye: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, 0.0, 1.0)) -> Pose:
    """Cameras at ``eye`` looking at ``target``, image y axis pointing away from ``up``.

    kornia has no look-at helper for OpenCV axes, hence this one. The camera's z axis points from
    ``eye`` to ``target``, its x axis is ``z x up`` (right in the image) and its y axis ``z x x``
    (down in the image), so ``target`` projects to the principal point and ``up`` points up in
    the image.

    Args:
        eye: camera centres ``(..., 3)`` in world coordinates.
        target: points looked at ``(..., 3)``; broadcasts with ``eye``.
        up: world up direction ``(3,)`` or ``(..., 3)``.
    Returns:
        :class:`Pose` ``cam_from_world`` of the broadcast batch shape.
    Raises:
        InputError: where ``target`` equals ``eye`` or the viewing direction is parallel to
            ``up`` (the roll is undefined there).
    """
    eye = as_tensor(eye)
    if not eye.is_floating_point():
        eye = eye.to(torch.get_default_dtype())
    target = as_tensor(target, dtype=eye.dtype, device=eye.device)
    up = as_tensor(up, dtype=eye.dtype, device=eye.device)
    for x, name in ((eye, "eye"), (target, "target"), (up, "up")):
        if x.dim() == 0 or x.shape[-1] != 3:
            raise InputError(f"{name} must have shape (..., 3), got {tuple(x.shape)}.")
    forward = target - eye
    if bool((forward.norm(dim=-1) < 1e-9).any()):
        raise InputError("look_at: target equals eye for some cameras; pass distinct points.")
    R = rotation_looking_along(forward, up)
    t = -(R @ eye[..., None])[..., 0]
    return Pose.from_Rt(R, t)


def rotation_looking_along(
    forward: torch.Tensor, up: torch.Tensor, roll: torch.Tensor | None = None
) -> torch.Tensor:
    """``cam_from_world`` rotations ``(..., 3, 3)`` of cameras looking along ``forward``.

    Args:
        forward: viewing directions ``(..., 3)`` (any length > 0).
        up: world up ``(..., 3)``, broadcasting with ``forward``.
        roll: optional angles ``(...)`` (radians) about the optical axis; positive turns the
            image x axis towards its y axis (the scene appears rotated counter-clockwise).
    Returns:
        rotations whose rows are the camera's x (right), y (down) and z (forward) axes.
    """
    z = torch.nn.functional.normalize(forward, dim=-1)
    x = torch.linalg.cross(z, up.expand_as(z))
    norm = x.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-9).any()):
        raise InputError(
            "the viewing direction is parallel to up for some cameras; the roll is undefined. "
            "Pass another up vector."
        )
    x = x / norm
    y = torch.linalg.cross(z, x)
    if roll is not None:
        c, s = torch.cos(roll)[..., None], torch.sin(roll)[..., None]
        x, y = c * x + s * y, c * y - s * x
    return torch.stack([x, y, z], -2)


def _rotation_ypr(
    yaw: torch.Tensor,
    pitch: torch.Tensor,
    roll: torch.Tensor,
    direction: torch.Tensor,
    lateral: torch.Tensor,
) -> torch.Tensor:
    """Rotations ``(L, 3, 3)`` from heading angles ``(L,)`` measured from ``direction`` towards
    ``lateral`` (both horizontal unit vectors, ``lateral = up x direction``), pitch and roll."""
    up = torch.linalg.cross(direction, lateral)
    cp = torch.cos(pitch)[..., None]
    forward = cp * (torch.cos(yaw)[..., None] * direction + torch.sin(yaw)[..., None] * lateral)
    forward = forward + torch.sin(pitch)[..., None] * up
    return rotation_looking_along(forward, up, roll)


# ---------------------------------------------------------------------------------- randomness
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=_DTYPE)


def _smooth_noise(
    t: torch.Tensor,
    channels: int,
    g: torch.Generator,
    periods: tuple[float, float],
    terms: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random signals in ``[-1, 1]`` and their derivatives.

    Each channel is ``sum_k a_k sin(2 pi t / T_k + phi_k) / sum_k a_k`` with periods ``T_k``
    log-uniform in ``periods``, amplitudes in ``[0.5, 1]`` and uniform phases.

    Args:
        t: ``(L,)`` times (or any monotone parameter).
        channels: number of independent signals ``C``.
        periods: ``(shortest, longest)`` period in units of ``t``.
    Returns:
        values ``(L, C)`` with ``|value| <= 1``, derivatives ``(L, C)`` w.r.t. ``t``.
    """
    lo, hi = math.log(periods[0]), math.log(periods[1])
    omega = 2 * math.pi / torch.exp(_uniform(g, lo, hi, channels, terms))
    amp = _uniform(g, 0.5, 1.0, channels, terms)
    amp = amp / amp.sum(-1, keepdim=True)
    phase = _uniform(g, 0.0, 2 * math.pi, channels, terms)
    arg = t[:, None, None] * omega + phase  # (L, C, K)
    return (amp * torch.sin(arg)).sum(-1), (amp * omega * torch.cos(arg)).sum(-1)


def _periodic_noise(
    u: torch.Tensor, channels: int, g: torch.Generator, harmonics: int = 3
) -> torch.Tensor:
    """Smooth random signals of period 1 in ``u``, within ``[-1, 1]``: ``(L,) -> (L, C)``.

    Harmonic ``k`` has amplitude ``~ 1/k`` so the curves wander without wiggling.
    """
    k = torch.arange(1, harmonics + 1, dtype=_DTYPE)
    amp = _uniform(g, 0.5, 1.0, channels, harmonics) / k
    amp = amp / amp.sum(-1, keepdim=True)
    phase = _uniform(g, 0.0, 2 * math.pi, channels, harmonics)
    return (amp * torch.sin(2 * math.pi * k * u[:, None, None] + phase)).sum(-1)


# ---------------------------------------------------------------------------------- scene frames
def _check_kind(scene: Scene, kind: str, what: str) -> None:
    if scene.kind != kind:
        raise InputError(f"{what} needs a {kind!r} scene, got a {scene.kind!r} scene.")


def _check_count(n: int, name: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise InputError(f"{name} must be a positive integer, got {n!r}.")


def _walkable(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    w = scene.walkable.detach().to("cpu", _DTYPE)
    if tuple(w.shape) != (2, 3) or bool((w[1] < w[0]).any()):
        raise InputError(f"scene.walkable must be (2, 3) [min, max] corners, got {w.tolist()}.")
    return w[0], w[1]


def _height_range(scene: Scene, base: float, heights: tuple[float, float]) -> tuple[float, float]:
    """Camera heights ``base + heights`` intersected with the walkable box's z range; the
    walkable range itself where they do not overlap."""
    lo, hi = _walkable(scene)
    zlo, zhi = float(lo[2]), float(hi[2])
    a, b = max(base + heights[0], zlo), min(base + heights[1], zhi)
    return (a, b) if a <= b else (zlo, zhi)


def _street_axes(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The street's unit ``direction``, ``lateral = up x direction`` and ``up`` (float64)."""
    up = torch.tensor([0.0, 0.0, 1.0], dtype=_DTYPE)
    given = scene.meta.get("direction", (1.0, 0.0, 0.0))
    d = torch.as_tensor(given, dtype=_DTYPE).flatten()
    if d.shape != (3,) or float((d - (d @ up) * up).norm()) < 1e-9:
        raise InputError(f"scene.meta['direction'] must be a horizontal 3-vector, got {given}.")
    d = d - (d @ up) * up
    d = d / d.norm()
    return d, torch.linalg.cross(up, d), up


def _range_along(lo: torch.Tensor, hi: torch.Tensor, axis: torch.Tensor) -> tuple[float, float]:
    """Range ``(min, max)`` of ``axis . p`` over the points ``p`` of the box ``[lo, hi]``."""
    a, b = lo * axis, hi * axis
    return float(torch.minimum(a, b).sum()), float(torch.maximum(a, b).sum())


def _to_scene(R: torch.Tensor, centers: torch.Tensor, scene: Scene) -> Pose:
    """Poses from rotations and camera centres, in the scene's dtype and device."""
    lo, hi = _walkable(scene)
    centers = torch.minimum(torch.maximum(centers, lo), hi)  # rounding only; never active
    t = -(R @ centers[..., None])[..., 0]
    dtype = scene.walkable.dtype if scene.walkable.is_floating_point() else torch.float32
    return Pose.from_Rt(R.to(dtype), t.to(dtype)).to(scene.walkable.device)


def _scene_bounds(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned bounds ``(3,)``, ``(3,)`` of all quads (the walkable box if there are none)."""
    if scene.num_quads == 0:
        return _walkable(scene)
    o = scene.origin.detach().to("cpu", _DTYPE)
    u = scene.edge_u.detach().to("cpu", _DTYPE)
    v = scene.edge_v.detach().to("cpu", _DTYPE)
    corners = torch.cat([o, o + u, o + v, o + u + v])
    return corners.amin(0), corners.amax(0)


# ---------------------------------------------------------------------------------- sequences
def driving_trajectory(
    scene: Scene,
    num_frames: int,
    fps: float = 10.0,
    speed: float = 8.0,
    seed: int = 0,
    lane: int | None = None,
    start: float | None = None,
) -> Pose:
    """A car-mounted camera driving along the street in one lane.

    The camera moves forward along ``scene.meta["direction"]`` at ``speed``, so consecutive
    frames are ``speed / fps`` metres apart, at a height of 1.5-2 m above ``meta["ground_z"]``,
    with a gentle lateral sway (up to 0.3 m, periods of 6-20 s), a heading that follows the sway
    plus a slow yaw wander (up to 2 degrees), a fixed mounting pitch (up to 2 degrees down) and
    small pitch/roll/height vibrations (0.3 degrees, 1 cm, periods of 0.7-3 s). The walkable box
    is assumed aligned with the street; every camera centre lies inside it.

    Args:
        scene: a ``"street"`` scene (``meta``: ``direction``, ``lanes_y`` (lane centres along
            ``up x direction``, i.e. world y for a street along x), ``ground_z``).
        num_frames: ``L``.
        fps: frames per second.
        speed: metres per second.
        seed: seeds every random choice (lane, start, height, motion).
        lane: index into ``meta["lanes_y"]``; random if ``None``.
        start: position of the first frame along the street direction (``direction . centre``,
            metres); random within the walkable box if ``None``.
    Returns:
        :class:`Pose` ``(L,)`` ``cam_from_world`` in the scene's dtype and device.
    Raises:
        InputError: on a non-street scene, bad arguments, or a street too short for ``L``
            frames at this speed (the message gives the maximum).
    """
    _check_kind(scene, "street", "driving_trajectory")
    _check_count(num_frames, "num_frames")
    if not (fps > 0 and speed > 0):
        raise InputError(f"fps and speed must be positive, got fps={fps}, speed={speed}.")
    g = _generator(seed)
    d, lat, up = _street_axes(scene)
    wlo, whi = _walkable(scene)
    s_lo, s_hi = _range_along(wlo, whi, d)
    c_lo, c_hi = _range_along(wlo, whi, lat)
    length = speed * (num_frames - 1) / fps
    if length > s_hi - s_lo + 1e-9:
        most = math.floor((s_hi - s_lo) * fps / speed + 1e-9) + 1
        raise InputError(
            f"the street's walkable length is {s_hi - s_lo:.1f} m: at {speed} m/s and {fps} fps at "
            f"most {most} frames fit, {num_frames} were requested; lower num_frames or speed."
        )
    u_start, u_lane, u_height = torch.rand(3, generator=g, dtype=_DTYPE).tolist()
    if start is None:
        s0 = s_lo + u_start * (s_hi - s_lo - length)
    elif s_lo - 1e-9 <= start <= s_hi - length + 1e-9:
        s0 = float(start)
    else:
        raise InputError(
            f"start={start} m puts the {length:.1f} m drive outside the walkable range "
            f"[{s_lo:.1f}, {s_hi:.1f}] m along the street; pass a start in "
            f"[{s_lo:.1f}, {s_hi - length:.1f}]."
        )
    lanes = [float(y) for y in scene.meta.get("lanes_y", [(c_lo + c_hi) / 2])]
    if lane is None:
        lane = min(int(u_lane * len(lanes)), len(lanes) - 1)
    elif not 0 <= lane < len(lanes):
        raise InputError(f"lane must be in [0, {len(lanes) - 1}], got {lane}.")
    center = min(max(lanes[lane], c_lo), c_hi)
    ground = float(scene.meta.get("ground_z", 0.0))
    z_lo, z_hi = _height_range(scene, ground, STREET_HEIGHT)
    z0 = z_lo + u_height * (z_hi - z_lo)

    t = torch.arange(num_frames, dtype=_DTYPE) / fps
    sway, dsway = _smooth_noise(t, 1, g, (6.0, 20.0))
    slow, _ = _smooth_noise(t, 1, g, (5.0, 15.0))
    shake, _ = _smooth_noise(t, 3, g, (0.7, 3.0))
    sway_amp = min(0.3, center - c_lo, c_hi - center)
    bob_amp = min(0.01, z0 - z_lo, z_hi - z0)
    lateral = center + sway_amp * sway[:, 0]
    z = z0 + bob_amp * shake[:, 2]
    along = s0 + speed * t
    centers = along[:, None] * d + lateral[:, None] * lat
    centers = centers + (z - (centers @ up))[:, None] * up

    deg = math.pi / 180
    yaw = torch.atan2(sway_amp * dsway[:, 0], torch.full_like(t, speed)) + 2 * deg * slow[:, 0]
    pitch = -2 * deg * torch.rand((), generator=g, dtype=_DTYPE) + 0.3 * deg * shake[:, 0]
    roll = 0.3 * deg * shake[:, 1]
    R = _rotation_ypr(yaw, pitch, roll, d, lat)
    return _to_scene(R, centers, scene)


def handheld_trajectory(
    scene: Scene,
    num_frames: int,
    fps: float = 30.0,
    speed: float = 0.5,
    seed: int = 0,
) -> Pose:
    """A handheld camera walking around a room, looking around at the walls and furniture.

    The camera centre follows a random smooth closed curve that winds once around the walkable
    box and spans it horizontally (no cusps: its velocity never vanishes), 1.2-1.8 m above the
    floor, traversed at constant ``speed`` (arc-length parametrised, so consecutive frames are
    ``speed / fps`` apart up to the curve's bend). The camera looks across the room: at a point
    beyond the walls, opposite its position around the room's centre within +-70 degrees (a
    smooth random wander), at a height varying between floor and ceiling; the pitch is softly
    limited to +-25 degrees and the roll wanders within +-3 degrees. Sequences longer than one
    loop go around again.

    Args:
        scene: a ``"room"`` scene.
        num_frames: ``L``.
        fps: frames per second.
        speed: metres per second along the path.
        seed: seeds the path, the gaze and the starting point.
    Returns:
        :class:`Pose` ``(L,)`` ``cam_from_world`` in the scene's dtype and device.
    """
    _check_kind(scene, "room", "handheld_trajectory")
    _check_count(num_frames, "num_frames")
    if not (fps > 0 and speed > 0):
        raise InputError(f"fps and speed must be positive, got fps={fps}, speed={speed}.")
    g = _generator(seed)
    wlo, whi = _walkable(scene)
    blo, bhi = _scene_bounds(scene)
    z_lo, z_hi = _height_range(scene, float(blo[2]), ROOM_HEIGHT)
    lo = torch.cat([wlo[:2], wlo.new_tensor([z_lo])])
    hi = torch.cat([whi[:2], whi.new_tensor([z_hi])])
    mid, half = (lo + hi) / 2, 0.98 * (hi - lo) / 2

    path = _PeriodicPath(g, mid, half)
    # arc length of one loop on a fine grid, then invert it for constant speed
    grid = torch.linspace(0, 1, 4097, dtype=_DTYPE)
    cum = torch.cat([grid.new_zeros(1), (path(grid).diff(dim=0)).norm(dim=-1).cumsum(0)])
    loop = float(cum[-1])
    s0 = float(torch.rand((), generator=g, dtype=_DTYPE)) * loop
    s = s0 + speed * torch.arange(num_frames, dtype=_DTYPE) / fps
    if loop < 1e-9:  # a degenerate (point) walkable box: stand still
        u = torch.zeros_like(s)
    else:
        turns, rest = torch.div(s, loop, rounding_mode="floor"), torch.remainder(s, loop)
        i = torch.searchsorted(cum, rest, right=True).clamp(1, len(cum) - 1)
        w = ((rest - cum[i - 1]) / (cum[i] - cum[i - 1]).clamp_min(1e-12)).clamp(0, 1)
        u = turns + (grid[i - 1] + w * (grid[i] - grid[i - 1]))
    centers = path(u)

    # gaze: a point beyond the walls, across the room from the camera (+-70 degrees), at a
    # height varying between floor and ceiling
    r_mid, r_half = (blo + bhi) / 2, (bhi - blo) / 2
    gaze = _periodic_noise(u, 2, g)
    phi = path.angle(u) + math.pi + 1.2 * gaze[:, 0]
    radius = math.sqrt(2) * r_half[:2] + 0.5  # an ellipse around the whole room
    target_xy = r_mid[:2] + radius * torch.stack([torch.cos(phi), torch.sin(phi)], -1)
    target_z = r_mid[2] + 0.8 * r_half[2] * gaze[:, 1]
    delta = torch.cat([target_xy, target_z[:, None]], -1) - centers
    horiz = delta[:, :2].norm(dim=-1)
    yaw = torch.atan2(delta[:, 1], delta[:, 0])
    limit = 25 * math.pi / 180
    pitch = limit * torch.tanh(torch.atan2(delta[:, 2], horiz) / limit)
    roll = 3 * math.pi / 180 * _periodic_noise(u, 1, g)[:, 0]
    ex, ey = torch.eye(3, dtype=_DTYPE)[:2]
    return _to_scene(_rotation_ypr(yaw, pitch, roll, ex, ey), centers, scene)


class _PeriodicPath:
    """A random smooth closed curve of period 1 in ``u`` that winds once around the centre of a
    box and fills it: ``u -> (x, y, z)``.

    Horizontally it is ``sum_k c_k exp(2 pi i k u)`` with the winding harmonic ``|c_1| = 1``
    dominant over the others (``sum_{k != 1} |k| |c_k| <= 0.7``), so the velocity never vanishes
    (no cusps, bounded curvature) and the curve never passes through the centre (the angle around
    it, :meth:`angle`, is smooth); it is then scaled to span the box. The height wanders with
    periodic noise.
    """

    _HARMONICS = ((-1, 0.3), (2, 0.08), (-2, 0.06), (3, 0.04))  # (k, largest |c_k|)

    def __init__(self, g: torch.Generator, mid: torch.Tensor, half: torch.Tensor):
        k = torch.tensor([1.0] + [float(k) for k, _ in self._HARMONICS], dtype=_DTYPE)
        mag = torch.cat(
            [k.new_ones(1), torch.tensor([m for _, m in self._HARMONICS], dtype=_DTYPE)]
        )
        mag = mag * torch.cat([k.new_ones(1), torch.rand(len(k) - 1, generator=g, dtype=_DTYPE)])
        self.k, self.mag = k, mag
        self.phase = _uniform(g, 0.0, 2 * math.pi, len(k))
        self.flip = bool(torch.rand((), generator=g) < 0.5)  # clockwise or counter-clockwise
        self.z_amp = _uniform(g, 0.5, 1.0, 2) / torch.tensor([1.0, 2.0], dtype=_DTYPE)
        self.z_amp = self.z_amp / self.z_amp.sum()
        self.z_phase = _uniform(g, 0.0, 2 * math.pi, 2)
        grid = self._xy(torch.linspace(0, 1, 4097, dtype=_DTYPE))
        self.xy_mid = (grid.amax(0) + grid.amin(0)) / 2
        self.xy_half = (grid.amax(0) - grid.amin(0)) / 2
        self.mid, self.half = mid, half

    def _xy(self, u: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * self.k * u[:, None] + self.phase  # (L, K)
        xy = torch.stack([(self.mag * torch.cos(arg)).sum(-1), (self.mag * torch.sin(arg)).sum(-1)])
        xy = xy.T
        return xy * xy.new_tensor([1.0, -1.0]) if self.flip else xy

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Points ``(L, 3)`` at parameters ``u`` ``(L,)``."""
        xy = (self._xy(u) - self.xy_mid) / self.xy_half
        k = torch.arange(1, 3, dtype=_DTYPE)
        z = (self.z_amp * torch.sin(2 * math.pi * k * u[:, None] + self.z_phase)).sum(-1)
        return self.mid + self.half * torch.cat([xy, z[:, None]], -1)

    def angle(self, u: torch.Tensor) -> torch.Tensor:
        """The unwrapped angle ``(L,)`` of the horizontal curve around its centre (continuous;
        it changes by ``+-2 pi`` per loop)."""
        xy = self._xy(u)
        a = torch.atan2(xy[:, 1], xy[:, 0])
        # the winding harmonic dominates: the angle follows 2 pi u + phase within pi / 2
        base = 2 * math.pi * u + self.phase[0]
        base = -base if self.flip else base
        return base + torch.remainder(a - base + math.pi, 2 * math.pi) - math.pi


# ---------------------------------------------------------------------------------- mapping views
def random_viewpoints(scene: Scene, num: int, seed: int = 0) -> Pose:
    """Viewpoints spread over the scene, for mapping (reference images) or queries.

    Street: centres stratified along the street (one per equal slice of the walkable length, in
    order), uniform across the walkable width, 1.5-2 m above the ground. Two thirds look along
    the street (either way) with a heading jitter of +-30 degrees, one third at a facade (either
    side) with +-20 degrees; pitch within +-5 degrees, roll within +-2 degrees.

    Room: centres uniform in the walkable box, 1.2-1.8 m above the floor, each looking at a
    random point on a wall, picture or piece of furniture (area-weighted over the scene's quads
    that are not floor or ceiling, at least 1 m away horizontally where possible); the pitch is
    limited to +-30 degrees and the roll to +-3 degrees.

    Args:
        scene: a ``"street"`` or ``"room"`` scene.
        num: ``N``.
        seed: seeds every choice.
    Returns:
        :class:`Pose` ``(N,)`` ``cam_from_world`` in the scene's dtype and device.
    """
    _check_count(num, "num")
    if scene.kind == "street":
        return _street_viewpoints(scene, num, _generator(seed))
    if scene.kind == "room":
        return _room_viewpoints(scene, num, _generator(seed))
    raise InputError(f"random_viewpoints supports 'street' and 'room' scenes, got {scene.kind!r}.")


def nearby_viewpoints(
    scene: Scene,
    poses: Pose,
    num: int,
    seed: int = 0,
    max_shift: float = 1.5,
    max_yaw_deg: float = 20.0,
) -> Pose:
    """Viewpoints near given ones: queries that overlap the mapped references.

    Each view picks one of ``poses`` at random, moves its centre by up to ``max_shift`` metres
    horizontally (clamped to the walkable box) and turns it about the world's vertical axis by up
    to ``max_yaw_deg``, as a query driving or walking the mapped route would.

    Args:
        scene: the scene (its walkable box bounds the centres).
        poses: :class:`Pose` ``(M,)`` to start from, e.g. the references.
        num: ``N``.
        seed: seeds every choice.
    Returns:
        :class:`Pose` ``(N,)`` ``cam_from_world`` in the scene's dtype and device.
    """
    _check_count(num, "num")
    if len(poses.shape) != 1 or poses.shape[0] < 1:
        raise InputError("poses must be a Pose of batch shape (M,) with M >= 1.")
    g = _generator(seed)
    base = poses.to("cpu", _DTYPE)[torch.randint(poses.shape[0], (num,), generator=g)]
    shift = _uniform(g, -max_shift, max_shift, num, 3)
    shift[:, 2] = 0
    yaw = torch.deg2rad(_uniform(g, -max_yaw_deg, max_yaw_deg, num))
    turn = Pose.from_axis_angle(
        torch.stack([0 * yaw, 0 * yaw, yaw], -1), torch.zeros(num, 3, dtype=_DTYPE)
    )
    R = base.R @ turn.R.transpose(-1, -2)  # world_from_cam rotated about the world z axis
    return _to_scene(R, base.center() + shift, scene)


def _street_viewpoints(scene: Scene, n: int, g: torch.Generator) -> Pose:
    d, lat, up = _street_axes(scene)
    wlo, whi = _walkable(scene)
    s_lo, s_hi = _range_along(wlo, whi, d)
    c_lo, c_hi = _range_along(wlo, whi, lat)
    z_lo, z_hi = _height_range(scene, float(scene.meta.get("ground_z", 0.0)), STREET_HEIGHT)
    r = torch.rand(n, 8, generator=g, dtype=_DTYPE)
    along = s_lo + (torch.arange(n, dtype=_DTYPE) + r[:, 0]) / n * (s_hi - s_lo)
    lateral = c_lo + r[:, 1] * (c_hi - c_lo)
    z = z_lo + r[:, 2] * (z_hi - z_lo)
    centers = along[:, None] * d + lateral[:, None] * lat
    centers = centers + (z - centers @ up)[:, None] * up

    deg = math.pi / 180
    facade = r[:, 3] < 1 / 3
    side = torch.where(r[:, 4] < 0.5, -1.0, 1.0)
    base = torch.where(facade, side * 90 * deg, torch.where(side > 0, 0.0, math.pi))
    jitter = torch.where(facade, 20 * deg, 30 * deg) * (2 * r[:, 5] - 1)
    yaw = base + jitter
    pitch = 5 * deg * (2 * r[:, 6] - 1)
    roll = 2 * deg * (2 * r[:, 7] - 1)
    return _to_scene(_rotation_ypr(yaw, pitch, roll, d, lat), centers, scene)


def _room_viewpoints(scene: Scene, n: int, g: torch.Generator, candidates: int = 16) -> Pose:
    wlo, whi = _walkable(scene)
    blo, _ = _scene_bounds(scene)
    z_lo, z_hi = _height_range(scene, float(blo[2]), ROOM_HEIGHT)
    lo = torch.cat([wlo[:2], wlo.new_tensor([z_lo])])
    hi = torch.cat([whi[:2], whi.new_tensor([z_hi])])
    centers = lo + torch.rand(n, 3, generator=g, dtype=_DTYPE) * (hi - lo)

    targets = _surface_points(scene, n * candidates, g)
    deg = math.pi / 180
    if targets is None:  # nothing to look at: random headings
        yaw = _uniform(g, -math.pi, math.pi, n)
        pitch = torch.zeros(n, dtype=_DTYPE)
    else:
        delta = targets.reshape(n, candidates, 3) - centers[:, None]
        horiz = delta[..., :2].norm(dim=-1)
        # the first candidate at least 1 m away, else the farthest
        far = horiz >= 1.0
        pick = torch.where(far.any(-1), far.double().argmax(-1), horiz.argmax(-1))
        delta = delta[torch.arange(n), pick]
        yaw = torch.atan2(delta[:, 1], delta[:, 0])
        pitch = torch.atan2(delta[:, 2], delta[:, :2].norm(dim=-1)).clamp(-30 * deg, 30 * deg)
    roll = _uniform(g, -3 * deg, 3 * deg, n)
    ex, ey = torch.eye(3, dtype=_DTYPE)[:2]
    return _to_scene(_rotation_ypr(yaw, pitch, roll, ex, ey), centers, scene)


def _surface_points(scene: Scene, n: int, g: torch.Generator) -> torch.Tensor | None:
    """``n`` random points ``(n, 3)`` on the scene's quads other than floor and ceiling,
    area-weighted; ``None`` if there are none."""
    kinds = scene.material_kind
    skip = torch.tensor(
        [kinds[int(m)] in ("floor", "ceiling", "ground") for m in range(len(kinds))],
        dtype=torch.bool,
    )
    material = scene.material.detach().cpu()
    keep = ~skip[material] if len(kinds) else torch.zeros(0, dtype=torch.bool)
    o = scene.origin.detach().to("cpu", _DTYPE)[keep]
    u = scene.edge_u.detach().to("cpu", _DTYPE)[keep]
    v = scene.edge_v.detach().to("cpu", _DTYPE)[keep]
    area = torch.linalg.cross(u, v).norm(dim=-1)
    if len(o) == 0 or float(area.sum()) <= 0:
        return None
    q = torch.multinomial(area / area.sum(), n, replacement=True, generator=g)
    ab = torch.rand(n, 2, generator=g, dtype=_DTYPE)
    return o[q] + ab[:, :1] * u[q] + ab[:, 1:] * v[q]
