"""Procedural street scenes with exact labels and depth, rendered by vectorised numpy ray casting.

A scene is a straight street (road with lane marks, optional terrain verge, sidewalks, an optional crossing) lined
with axis-aligned boxes (building facades with windows, walls, hedges, tree trunks, poles with lamps and signs,
cars, pedestrians) and ellipsoids (tree crowns, heads), lit by a sun with cast shadows and a sky with clouds. Every
ray is intersected with every primitive at once as one (pixels x primitives) array, so a 64x128 frame takes
about 25 ms on one core and the labels (Cityscapes train IDs) and depth are exact by construction.

World frame: x right, y up, z along the street; the ground is y = 0 and the camera sits near x = 0, z = 0.
Besides RGB, a `Render` keeps the buffers the physical styles need (albedo, irradiance, normals, world points,
light emission, lamp positions), so night lighting and snow cover follow the geometry instead of the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE: tuple[int, int] = (64, 128)
"""Default (H, W): the Cityscapes aspect ratio; 8x16 tokens for a patch-8 ViT keeps the MiniDG sweep on CPU."""

MAX_DEPTH = 150.0
"""Depth of the sky in metres; geometry farther away is clamped to it, so the sky is never nearer than anything."""

# Cityscapes train IDs the renderer draws (src.data.labels.CLASS_NAMES has all 19).
ROAD, SIDEWALK, BUILDING, WALL, POLE, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = (
    0,
    1,
    2,
    3,
    5,
    7,
    8,
    9,
    10,
    11,
    13,
)
RENDERED_CLASSES: tuple[int, ...] = (
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    POLE,
    TRAFFIC_SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    CAR,
)

# Surface materials: how albedo and night emission are textured.
PLAIN, FACADE, FOLIAGE, BODY, GLASS, TYRE, LAMP, SIGN, BRICK = range(9)
HEADLIGHTS, TAILLIGHTS = 1.0, 2.0  # BODY aux[0]: which lights the face towards the camera carries

_SEED = int | Sequence[int]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; `rotation` maps camera axes (x right, y up, z forward) to the world."""

    position: np.ndarray
    rotation: np.ndarray
    fov: float  # horizontal field of view, radians


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one frame: camera, street layout, primitives, colours and light."""

    camera: Camera
    road_half: float
    verge: float  # terrain strip between kerb and sidewalk (0: none)
    sidewalk: float
    tile: float  # sidewalk paving size
    crossing: tuple[float, float] | None  # z-range of a crossing street
    edge_lines: bool
    box_lo: np.ndarray  # (K, 3)
    box_hi: np.ndarray  # (K, 3)
    box_label: np.ndarray  # (K,) train IDs
    box_material: np.ndarray  # (K,)
    box_colour: np.ndarray  # (K, 3)
    box_aux: np.ndarray  # (K, 4) material parameters (window grid, car lights)
    ell_centre: np.ndarray  # (E, 3)
    ell_radii: np.ndarray  # (E, 3)
    ell_label: np.ndarray
    ell_material: np.ndarray
    ell_colour: np.ndarray
    road_colour: np.ndarray
    sidewalk_colour: np.ndarray
    terrain_colour: np.ndarray
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    cloud_cover: float
    sun: np.ndarray  # unit vector towards the sun
    sun_strength: float
    ambient: float
    windows_lit: float  # fraction of windows lit at night
    lamps: np.ndarray  # (n, 3) lamp-head positions


@dataclass(frozen=True)
class Render:
    """One rendered frame (H, W) with the buffers the styles need."""

    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1], day light
    label: np.ndarray  # uint8 (H, W) Cityscapes train IDs
    depth: np.ndarray  # float32 (H, W) z-depth in metres, sky = MAX_DEPTH
    albedo: np.ndarray  # float32 (H, W, 3)
    irradiance: np.ndarray  # float32 (H, W) sun + ambient light reaching the surface (shadows included)
    normal: np.ndarray  # float32 (H, W, 3) world normals, 0 for sky
    points: np.ndarray  # float32 (H, W, 3) world positions of the hits, 0 for sky
    emission: np.ndarray  # float32 (H, W, 3) light sources (lit windows, lamps, car lights), shown at night
    ray_up: np.ndarray  # float32 (H, W) world-y component of each pixel's ray: the sky gradient's elevation
    sky: np.ndarray  # bool (H, W) rays that hit nothing; styles use it (not the labels, not the clamped depth)
    camera_position: np.ndarray  # (3,)
    lamps: np.ndarray  # (n, 3)


# ----------------------------------------------------------------------------------------------- noise
_MASK32 = np.uint64(0xFFFFFFFF)


def _hash(*coords: np.ndarray, salt: int = 0) -> np.ndarray:
    """Uniform [0, 1) per integer lattice point: integer mixing, so textures are bit-exact on every platform."""
    h = np.full(np.shape(coords[0]), (salt * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF, dtype=np.uint64)
    for c, prime in zip(coords, (0x8DA6B343, 0xD8163841, 0xCB1AB31F)):
        h ^= (np.asarray(c).astype(np.int64).astype(np.uint64) * np.uint64(prime)) & _MASK32
        h = ((h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)) & _MASK32
        h = ((h ^ (h >> np.uint64(12))) * np.uint64(0x297A2D39)) & _MASK32
    h ^= h >> np.uint64(15)
    return (h & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(2**24)


def _cell_noise(u: np.ndarray, v: np.ndarray, scale: float, salt: int = 0) -> np.ndarray:
    """Blocky per-cell noise (grain of asphalt, leaves, plaster)."""
    return _hash(np.floor(u * scale), np.floor(v * scale), salt=salt)


def value_noise(u: np.ndarray, v: np.ndarray, scale: float, salt: int = 0) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1) (clouds, stains, snow drifts)."""
    u, v = u * scale, v * scale
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    a, b = _hash(i, j, salt=salt), _hash(i + 1, j, salt=salt)
    c, d = _hash(i, j + 1, salt=salt), _hash(i + 1, j + 1, salt=salt)
    return (a + (b - a) * fu) * (1 - fv) + (c + (d - c) * fu) * fv


# ----------------------------------------------------------------------------------------------- scene sampling
class _Primitives:
    """Collects boxes and ellipsoids; `side` mirrors x so both sides of the street share one description."""

    def __init__(self) -> None:
        self.boxes: list[tuple] = []
        self.ellipsoids: list[tuple] = []

    def box(self, side: int, extent: Sequence[float], kind: tuple[int, int], colour: np.ndarray, aux=(0, 0, 0, 0)):
        """`extent` = (x0, x1, y0, y1, z0, z1) with x measured outwards on `side`; `kind` = (label, material)."""
        x0, x1, y0, y1, z0, z1 = extent
        x0, x1 = (x0, x1) if side > 0 else (-x1, -x0)
        self.boxes.append(((x0, y0, z0), (x1, y1, z1), *kind, colour, tuple(aux)))

    def ellipsoid(self, side: int, centre: Sequence[float], radii: Sequence[float], kind: tuple[int, int],
                  colour: np.ndarray) -> None:  # fmt: skip
        self.ellipsoids.append(((side * centre[0], centre[1], centre[2]), tuple(radii), *kind, colour))

    def arrays(self) -> dict[str, np.ndarray]:
        f32 = np.float32
        b, e = self.boxes, self.ellipsoids
        return dict(
            box_lo=np.array([p[0] for p in b], f32).reshape(-1, 3),
            box_hi=np.array([p[1] for p in b], f32).reshape(-1, 3),
            box_label=np.array([p[2] for p in b], np.uint8),
            box_material=np.array([p[3] for p in b], np.uint8),
            box_colour=np.array([p[4] for p in b], f32).reshape(-1, 3),
            box_aux=np.array([p[5] for p in b], f32).reshape(-1, 4),
            ell_centre=np.array([p[0] for p in e], f32).reshape(-1, 3),
            ell_radii=np.array([p[1] for p in e], f32).reshape(-1, 3),
            ell_label=np.array([p[2] for p in e], np.uint8),
            ell_material=np.array([p[3] for p in e], np.uint8),
            ell_colour=np.array([p[4] for p in e], f32).reshape(-1, 3),
        )


# (label, material) of each kind of primitive
_FACADE, _HEDGE, _WALL, _TRUNK, _CROWN = (
    (BUILDING, FACADE),
    (VEGETATION, FOLIAGE),
    (WALL, BRICK),
    (VEGETATION, PLAIN),
    (VEGETATION, FOLIAGE),
)
_POLE, _LAMP, _SIGN, _PERSON = (POLE, PLAIN), (POLE, LAMP), (TRAFFIC_SIGN, SIGN), (PERSON, PLAIN)
_CAR_BODY, _CAR_GLASS, _CAR_TYRES = (CAR, BODY), (CAR, GLASS), (CAR, TYRE)
_FACADE_PALETTE = np.array(
    [[0.72, 0.62, 0.50], [0.55, 0.55, 0.60], [0.78, 0.72, 0.62], [0.62, 0.36, 0.30],
     [0.45, 0.45, 0.42], [0.85, 0.82, 0.74], [0.50, 0.42, 0.35], [0.66, 0.70, 0.72]]
)  # fmt: skip
_CAR_PALETTE = np.array(
    [[0.85, 0.85, 0.85], [0.08, 0.08, 0.09], [0.45, 0.46, 0.48], [0.65, 0.66, 0.68],
     [0.60, 0.08, 0.06], [0.10, 0.20, 0.50], [0.20, 0.30, 0.22], [0.75, 0.60, 0.30]]
)  # fmt: skip
_SIGN_PALETTE = np.array([[0.80, 0.10, 0.08], [0.10, 0.25, 0.70], [0.90, 0.75, 0.10], [0.90, 0.90, 0.90]])
_CLOTH_PALETTE = np.array(
    [[0.10, 0.10, 0.12], [0.20, 0.25, 0.45], [0.55, 0.15, 0.12], [0.45, 0.40, 0.30], [0.70, 0.70, 0.68],
     [0.15, 0.35, 0.20]]
)  # fmt: skip


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # columns: right, up, forward (looking down by pitch)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def sample_scene(rng: np.random.Generator) -> Scene:
    """Random street layout, camera, colours and light."""

    def jitter(c: Sequence[float], s: float) -> np.ndarray:
        return np.clip(np.asarray(c) + rng.uniform(-s, s, 3), 0.02, 1.0)

    def pick(palette: np.ndarray, s: float = 0.0) -> np.ndarray:
        return jitter(palette[rng.integers(len(palette))], s)

    def window_grid() -> tuple[float, ...]:  # column spacing, window width fraction, floor height, height fraction
        return rng.uniform(2.2, 3.6), rng.uniform(0.35, 0.6), rng.uniform(2.8, 3.6), rng.uniform(0.4, 0.6)

    road_half = rng.uniform(3.0, 6.0)
    verge = rng.uniform(0.8, 2.0) if rng.random() < 0.35 else 0.0
    sidewalk = rng.uniform(1.6, 3.5)
    kerb = road_half + verge
    line = kerb + sidewalk  # building line
    crossing = None
    if rng.random() < 0.4:
        z0 = rng.uniform(14, 45)
        crossing = (z0, z0 + rng.uniform(7, 12))
    blocked = (crossing[0] - sidewalk - 0.5, crossing[1] + sidewalk + 0.5) if crossing else (np.inf, np.inf)

    def free(z0: float, z1: float) -> bool:
        return z1 < blocked[0] or z0 > blocked[1]

    prims = _Primitives()
    lamps: list[tuple[float, float, float]] = []
    for side in (-1, 1):
        # building row with gaps (hedge, wall, open terrain, trees)
        z = rng.uniform(-6, 2)
        while z < 110:
            length = rng.uniform(7, 22)
            if not free(z, z + length):
                z = blocked[1] + rng.uniform(0, 2)
                continue
            x0, z1 = line + rng.uniform(0, 1.5), z + length
            if rng.random() < 0.22:
                gap = rng.random()
                if gap < 0.4:
                    height = rng.uniform(0.8, 2.5)
                    prims.box(
                        side, (x0, x0 + rng.uniform(0.8, 3), 0, height, z, z1), _HEDGE, jitter([0.18, 0.4, 0.14], 0.08)
                    )
                elif gap < 0.75:
                    colour, brick = jitter([0.6, 0.55, 0.5], 0.15), (rng.uniform(0.15, 0.3), 0, 0, 0)
                    prims.box(side, (x0, x0 + 0.3, 0, rng.uniform(0.7, 2.2), z, z1), _WALL, colour, brick)
                for _ in range(rng.integers(0, 3)):
                    xt, zt, r, top = (
                        x0 + rng.uniform(2, 6),
                        rng.uniform(z, z1),
                        rng.uniform(1.5, 3.0),
                        rng.uniform(3.5, 7),
                    )
                    prims.box(
                        side, (xt - 0.2, xt + 0.2, 0, top, zt - 0.2, zt + 0.2), _TRUNK, jitter([0.3, 0.22, 0.15], 0.05)
                    )
                    radii = (r, r * rng.uniform(0.8, 1.2), r)
                    prims.ellipsoid(side, (xt, top, zt), radii, _CROWN, jitter([0.2, 0.42, 0.15], 0.1))
            else:
                depth, height = rng.uniform(8, 16), rng.uniform(5, 28)
                prims.box(side, (x0, x0 + depth, 0, height, z, z1), _FACADE, pick(_FACADE_PALETTE, 0.1), window_grid())
            z = z1 + (rng.uniform(0.2, 3) if rng.random() < 0.5 else 0.0)
        # street trees on the verge or at the sidewalk's kerb edge
        for _ in range(rng.integers(0, 6)):
            zt = rng.uniform(3, 70)
            if not free(zt - 2, zt + 2):
                continue
            xt = road_half + (verge / 2 if verge else rng.uniform(0.5, 0.9))
            r, top = rng.uniform(1.2, 2.4), rng.uniform(3.5, 6.0)
            prims.box(
                side, (xt - 0.15, xt + 0.15, 0, top, zt - 0.15, zt + 0.15), _TRUNK, jitter([0.3, 0.22, 0.15], 0.05)
            )
            radii = (r, r * rng.uniform(0.7, 1.1), r)
            prims.ellipsoid(side, (xt, top + 0.3, zt), radii, _CROWN, jitter([0.2, 0.42, 0.15], 0.1))
        # poles: thick enough (0.25-0.4 m) to cover several pixels nearby; lamp arms and signs
        for _ in range(rng.integers(1, 6)):
            zp = rng.uniform(4, 70)
            xp, w, top = kerb + rng.uniform(0.25, 0.5), rng.uniform(0.25, 0.4) / 2, rng.uniform(4.5, 8.5)
            grey = jitter([0.45, 0.46, 0.47], 0.15)
            prims.box(side, (xp - w, xp + w, 0, top, zp - w, zp + w), _POLE, grey)
            if rng.random() < 0.6:
                reach = rng.uniform(1.0, 2.5)
                prims.box(side, (xp - reach, xp + w, top - 0.25, top, zp - 0.1, zp + 0.1), _POLE, grey)
                head = (xp - reach - 0.3, xp - reach + 0.4, top - 0.45, top - 0.2, zp - 0.25, zp + 0.25)
                prims.box(side, head, _LAMP, np.array([0.8, 0.8, 0.75]))
                lamps.append((side * (xp - reach + 0.05), top - 0.5, zp))
            if rng.random() < 0.45:
                half, y0 = rng.uniform(0.35, 0.5), rng.uniform(2.0, 3.0)
                plate = (xp - half - 0.2, xp + half - 0.2, y0, y0 + rng.uniform(0.6, 0.9), zp - w - 0.06, zp - w)
                prims.box(side, plate, _SIGN, pick(_SIGN_PALETTE))
        # pedestrians on the sidewalk: legs, torso, head
        for _ in range(rng.integers(0, 5)):
            xq, zq, s = kerb + rng.uniform(0.5, max(0.6, sidewalk - 0.4)), rng.uniform(3, 45), rng.uniform(0.9, 1.1)
            prims.box(side, (xq - 0.18, xq + 0.18, 0, 0.85 * s, zq - 0.12, zq + 0.12), _PERSON, pick(_CLOTH_PALETTE))
            torso = (xq - 0.25, xq + 0.25, 0.85 * s, 1.48 * s, zq - 0.15, zq + 0.15)
            prims.box(side, torso, _PERSON, pick(_CLOTH_PALETTE))
            head = (0.12 * s, 0.14 * s, 0.12 * s)
            prims.ellipsoid(side, (xq, 1.6 * s, zq), head, _PERSON, jitter([0.7, 0.52, 0.4], 0.15))

    # cars: oncoming on the left (headlights towards us), ahead on the right (tail lights), parked at the kerb
    placed: list[tuple[float, float, float]] = []
    for _ in range(rng.integers(0, 9)):
        half_w, length, height = rng.uniform(0.8, 1.0), rng.uniform(3.8, 5.0), rng.uniform(1.35, 1.9)
        side = rng.choice([-1, 1])
        if rng.random() < 0.35:
            xc, lights = side * (road_half - half_w - 0.2), rng.choice([HEADLIGHTS, TAILLIGHTS])
        else:
            xc, lights = side * rng.uniform(0.3, 0.7) * road_half, HEADLIGHTS if side < 0 else TAILLIGHTS
        zc = rng.uniform(5 if abs(xc) > 1.5 else 7, 55)
        if any(abs(xc - x) < 2 * half_w + 0.3 and zc < z1 + 1 and zc + length > z0 - 1 for x, z0, z1 in placed):
            continue
        placed.append((xc, zc, zc + length))
        colour, x0, x1, z1 = pick(_CAR_PALETTE, 0.06), xc - half_w, xc + half_w, zc + length
        prims.box(1, (x0, x1, 0.3, 0.62 * height, zc, z1), _CAR_BODY, colour, (lights, 0, 0, 0))
        prims.box(1, (x0 + 0.1, x1 - 0.1, 0.62 * height, height, zc + 0.9, z1 - 1.0), _CAR_GLASS, colour)
        prims.box(1, (x0 + 0.05, x1 - 0.05, 0, 0.35, zc + 0.4, z1 - 0.4), _CAR_TYRES, colour)
    if rng.random() < 0.3:  # the street ends in a facade
        zf = rng.uniform(80, 120)
        end = (-line - 20, line + 20, 0, rng.uniform(8, 30), zf, zf + 15)
        prims.box(1, end, _FACADE, pick(_FACADE_PALETTE, 0.1), window_grid())

    yaw, pitch, roll = np.deg2rad(rng.uniform(-7, 7)), np.deg2rad(rng.uniform(2, 10)), np.deg2rad(rng.uniform(-2, 2))
    camera = Camera(
        position=np.array([rng.uniform(-0.4, 0.4) * road_half, rng.uniform(1.3, 2.2), 0.0]),
        rotation=_rotation(yaw, pitch, roll),
        fov=np.deg2rad(rng.uniform(75, 95)),
    )
    elevation, azimuth = np.deg2rad(rng.uniform(20, 65)), rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])
    overcast = rng.random() < 0.25
    grey = rng.uniform(0.25, 0.5)
    return Scene(
        camera=camera,
        road_half=road_half,
        verge=verge,
        sidewalk=sidewalk,
        tile=rng.uniform(0.5, 1.0),
        crossing=crossing,
        edge_lines=bool(rng.random() < 0.6),
        **prims.arrays(),
        road_colour=jitter([grey, grey, grey * 1.03], 0.03),
        sidewalk_colour=jitter([0.62, 0.58, 0.53], 0.15),
        terrain_colour=jitter([0.42, 0.48, 0.24], 0.12),
        sky_zenith=jitter([0.70, 0.72, 0.75], 0.05) if overcast else jitter([0.35, 0.55, 0.90], 0.1),
        sky_horizon=jitter([0.80, 0.87, 0.97], 0.05),
        cloud_cover=1.0 if overcast else rng.uniform(0.0, 0.7),
        sun=sun.astype(np.float32),
        sun_strength=rng.uniform(0.05, 0.15) if overcast else rng.uniform(0.45, 0.75),
        ambient=rng.uniform(0.7, 0.85) if overcast else rng.uniform(0.35, 0.5),
        windows_lit=rng.uniform(0.15, 0.6),
        lamps=np.array(lamps, np.float32).reshape(-1, 3),
    )


# ----------------------------------------------------------------------------------------------- ray casting
def _camera_rays(camera: Camera, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """World ray directions (P, 3) and, per ray, z-depth per unit of ray length (P,)."""
    h, w = size
    focal = (w / 2) / np.tan(camera.fov / 2)
    u = (np.arange(w) + 0.5 - w / 2) / focal
    v = (np.arange(h) + 0.5 - h / 2) / focal
    uu, vv = np.meshgrid(u, v)
    cam = np.stack([uu, -vv, np.ones_like(uu)], -1).reshape(-1, 3)
    cam /= np.linalg.norm(cam, axis=1, keepdims=True)
    return (cam @ camera.rotation.T).astype(np.float32), cam[:, 2].astype(np.float32)


def _hit_boxes(origin: np.ndarray, inv_dir: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Slab test of P rays against K boxes: entry distance (P, K) (inf on a miss) and per-axis entry (3, P, K)."""
    near = []
    t_near, t_far = None, None
    for a in range(3):
        o = origin[..., a : a + 1] if origin.ndim == 2 else origin[a]
        t1 = (lo[None, :, a] - o) * inv_dir[:, a : a + 1]
        t2 = (hi[None, :, a] - o) * inv_dir[:, a : a + 1]
        a_near, a_far = np.minimum(t1, t2), np.maximum(t1, t2)
        near.append(a_near)
        t_near = a_near if t_near is None else np.maximum(t_near, a_near)
        t_far = a_far if t_far is None else np.minimum(t_far, a_far)
    hit = (t_near <= t_far) & (t_near > 1e-3)
    return np.where(hit, t_near, np.inf), np.stack(near)


def _hit_ellipsoids(origin: np.ndarray, direction: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Entry distance (P, E) of P rays into E axis-aligned ellipsoids (inf on a miss)."""
    a, b, c = 0.0, 0.0, -1.0
    for i in range(3):  # per axis (P, E) arrays: faster than reducing a (P, E, 3) array
        o = ((origin[:, i : i + 1] if origin.ndim == 2 else origin[i]) - centre[None, :, i]) / radii[None, :, i]
        d = direction[:, i : i + 1] / radii[None, :, i]
        a, b, c = a + d * d, b + 2 * o * d, c + o * o
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc >= 0) & (t > 1e-3), t, np.inf)


def _occluded(points: np.ndarray, direction: np.ndarray, scene: Scene) -> np.ndarray:
    """Whether anything lies between each point and the light along `direction` (shadow rays)."""
    inv = np.float32(1) / np.where(np.abs(direction) < 1e-6, np.float32(1e-6), direction)
    blocked = np.zeros(len(points), bool)
    if len(scene.box_lo):
        t, _ = _hit_boxes(points, np.broadcast_to(inv, points.shape), scene.box_lo, scene.box_hi)
        blocked |= np.isfinite(t).any(1)
    if len(scene.ell_centre):
        dirs = np.broadcast_to(direction, points.shape)
        blocked |= np.isfinite(_hit_ellipsoids(points, dirs, scene.ell_centre, scene.ell_radii)).any(1)
    return blocked


def _ground(scene: Scene, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Ground labels: road (main street and crossing), verge terrain, sidewalks, terrain beyond."""
    ax = np.abs(x)
    kerb = scene.road_half + scene.verge
    if scene.crossing:
        z0, z1 = scene.crossing
        cross_road = (z > z0) & (z < z1)
        near_cross = (z > z0 - scene.sidewalk) & (z < z1 + scene.sidewalk)
    else:
        cross_road = near_cross = np.zeros_like(ax, bool)
    road = (ax < scene.road_half) | cross_road
    verge = (ax >= scene.road_half) & (ax < kerb) & ~near_cross
    sidewalk = ~road & ~verge & ((ax < kerb + scene.sidewalk) | near_cross)
    return np.select([road, sidewalk], [ROAD, SIDEWALK], TERRAIN).astype(np.uint8)


def render(scene: Scene, size: tuple[int, int] = IMAGE_SIZE) -> Render:
    """Ray-cast `scene` at `size` = (H, W)."""
    h, w = size
    dirs, z_per_t = _camera_rays(scene.camera, size)
    origin = scene.camera.position.astype(np.float32)
    n_pix = len(dirs)
    t_best = np.full(n_pix, np.inf, np.float32)
    label = np.full(n_pix, SKY, np.uint8)  # rays that hit nothing
    material = np.full(n_pix, 255, np.uint8)  # 255: ground
    index = np.full(n_pix, -1)
    normal = np.zeros((n_pix, 3), np.float32)

    down = dirs[:, 1] < -1e-6
    t_best[down] = -origin[1] / dirs[down, 1]
    normal[down, 1] = 1
    rows = np.arange(n_pix)
    if len(scene.box_lo):
        inv = np.float32(1) / np.where(np.abs(dirs) < 1e-6, np.float32(1e-6), dirs)
        t_box, near = _hit_boxes(origin, inv, scene.box_lo, scene.box_hi)
        k = t_box.argmin(1)
        t_k = t_box[rows, k]
        better = t_k < t_best
        t_best[better], index[better] = t_k[better], k[better]
        axis = near[:, rows, k].argmax(0)
        face = np.zeros((n_pix, 3), np.float32)
        face[rows, axis] = -np.sign(dirs[rows, axis])
        normal[better] = face[better]
    n_box = len(scene.box_lo)
    if len(scene.ell_centre):
        t_ell = _hit_ellipsoids(origin, dirs, scene.ell_centre, scene.ell_radii)
        e = t_ell.argmin(1)
        t_e = t_ell[rows, e]
        better = t_e < t_best
        t_best[better], index[better] = t_e[better], n_box + e[better]
        p = origin + dirs[better] * t_e[better, None]
        n = (p - scene.ell_centre[e[better]]) / scene.ell_radii[e[better]] ** 2
        normal[better] = n / np.linalg.norm(n, axis=1, keepdims=True)

    hit = np.isfinite(t_best)
    points = np.where(hit[:, None], origin + dirs * np.where(hit, t_best, 0)[:, None], 0).astype(np.float32)
    on_ground = hit & (index < 0)
    on_box = (index >= 0) & (index < n_box)
    on_ell = index >= n_box
    label[on_ground] = _ground(scene, points[on_ground, 0], points[on_ground, 2])
    label[on_box] = scene.box_label[index[on_box]]
    material[on_box] = scene.box_material[index[on_box]]
    label[on_ell] = scene.ell_label[index[on_ell] - n_box]
    material[on_ell] = scene.ell_material[index[on_ell] - n_box]

    albedo, emission = _texture(scene, points, normal, label, material, index, hit)
    # sun light with cast shadows (shadow rays from just above each surface) plus ambient sky light
    lambert = np.clip(normal @ scene.sun, 0, 1)
    lit = hit & (lambert > 0)
    shadow = np.zeros(n_pix, bool)
    shadow[lit] = _occluded(points[lit] + normal[lit] * 0.02, scene.sun, scene)
    irradiance = (scene.ambient + scene.sun_strength * lambert * ~shadow).astype(np.float32)
    rgb = albedo * irradiance[:, None]
    sky = ~hit
    rgb[sky] = _sky(scene, dirs[sky])
    depth = np.where(hit, np.minimum(t_best * z_per_t, MAX_DEPTH), MAX_DEPTH).astype(np.float32)

    def img(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(h, w, *a.shape[1:]), dtype=np.float32)

    return Render(
        rgb=np.clip(img(rgb), 0, 1),
        label=label.reshape(h, w),
        depth=img(depth),
        albedo=img(albedo),
        irradiance=img(irradiance),
        normal=img(normal),
        points=img(points),
        emission=img(emission),
        ray_up=img(dirs[:, 1]),
        sky=sky.reshape(h, w),
        camera_position=origin,
        lamps=scene.lamps,
    )


def _sky(scene: Scene, dirs: np.ndarray) -> np.ndarray:
    """Horizon-to-zenith gradient with soft clouds projected on a plane above the street."""
    up = np.clip(dirs[:, 1], 0.02, 1)
    t = np.clip(up / 0.5, 0, 1)[:, None] ** 0.7
    colour = scene.sky_horizon * (1 - t) + scene.sky_zenith * t
    cloud = value_noise(dirs[:, 0] / up, dirs[:, 2] / up, 0.8, salt=11) * 0.7
    cloud += value_noise(dirs[:, 0] / up, dirs[:, 2] / up, 2.5, salt=12) * 0.3
    amount = np.clip((cloud - (1 - scene.cloud_cover)) * 3, 0, 1)[:, None] * np.clip(up / 0.1, 0, 1)[:, None]
    return colour * (1 - amount) + np.array([0.9, 0.9, 0.92]) * (0.85 + 0.15 * cloud[:, None]) * amount


def _texture(
    scene: Scene,
    p: np.ndarray,
    normal: np.ndarray,
    label: np.ndarray,
    material: np.ndarray,
    index: np.ndarray,
    hit: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Albedo and night emission per pixel from the surface's label/material and world position."""
    n_pix = len(p)
    albedo = np.zeros((n_pix, 3), np.float32)
    emission = np.zeros((n_pix, 3), np.float32)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    fine = _hash(np.floor(x * 7), np.floor(y * 7), np.floor(z * 7), salt=1)[:, None]
    coarse = value_noise(x + y, z, 0.3, salt=2)[:, None]
    ground = hit & (material == 255)

    m = ground & (label == ROAD)
    road = scene.road_colour * (0.82 + 0.22 * fine + 0.2 * (coarse - 0.5))
    ax = np.abs(x)
    cross = (z > scene.crossing[0]) & (z < scene.crossing[1]) if scene.crossing else np.zeros(n_pix, bool)
    dashes = np.mod(z, 6) < 3
    marks = ((ax < 0.07) & dashes) | ((np.abs(ax - scene.road_half / 2) < 0.06) & dashes & (scene.road_half > 4.5))
    if scene.edge_lines:
        marks |= (ax > scene.road_half - 0.35) & (ax < scene.road_half - 0.22)
    marks &= ~cross
    if scene.crossing:
        zebra = (z > scene.crossing[0] - scene.sidewalk - 3) & (z < scene.crossing[0] - scene.sidewalk - 0.5)
        marks |= zebra & (np.mod(x, 1.0) < 0.5) & (ax < scene.road_half)
    road = np.where(marks[:, None], np.array([0.85, 0.85, 0.8]) * (0.9 + 0.1 * fine), road)
    albedo[m] = road[m]

    m = ground & (label == SIDEWALK)
    grooves = (np.mod(x, scene.tile) < 0.04) | (np.mod(z, scene.tile) < 0.04)
    kerb = np.abs(ax - scene.road_half - scene.verge) < 0.2
    sw = scene.sidewalk_colour * (0.9 + 0.15 * fine) * np.where(grooves, 0.75, 1.0)[:, None]
    albedo[m] = np.where(kerb[:, None], 0.8 * np.ones(3), sw)[m]

    m = ground & (label == TERRAIN)
    albedo[m] = (scene.terrain_colour * (0.65 + 0.5 * fine) * (0.8 + 0.4 * coarse))[m]

    box = index >= 0
    colour = np.zeros((n_pix, 3), np.float32)
    lo = np.zeros((n_pix, 3), np.float32)
    hi = np.ones((n_pix, 3), np.float32)
    aux = np.zeros((n_pix, 4), np.float32)
    n_box = len(scene.box_lo)
    is_box = box & (index < n_box)
    colour[is_box] = scene.box_colour[index[is_box]]
    lo[is_box], hi[is_box], aux[is_box] = (
        scene.box_lo[index[is_box]],
        scene.box_hi[index[is_box]],
        scene.box_aux[index[is_box]],
    )
    is_ell = index >= n_box
    colour[is_ell] = scene.ell_colour[index[is_ell] - n_box]
    local = (p - lo) / np.maximum(hi - lo, 1e-3)  # 0..1 inside the box

    m = box & (material == PLAIN)
    albedo[m] = (colour * (0.88 + 0.18 * fine))[m]

    m = material == FACADE
    if m.any():
        side_face = np.abs(normal[:, 0]) > 0.5
        along = np.where(side_face, z - lo[:, 2], x - lo[:, 0])
        col_w, win_w, floor_h, win_h = aux[:, 0], aux[:, 1], aux[:, 2], aux[:, 3]
        cu = np.mod(along, np.maximum(col_w, 1e-3)) / np.maximum(col_w, 1e-3)
        cv = np.mod(y, np.maximum(floor_h, 1e-3)) / np.maximum(floor_h, 1e-3)
        window = (np.abs(cu - 0.5) < win_w / 2) & (np.abs(cv - 0.55) < win_h / 2) & (y > 1.0) & (y < hi[:, 1] - 0.6)
        window &= np.abs(normal[:, 1]) < 0.5
        cell = _hash(np.floor(along / np.maximum(col_w, 1e-3)), np.floor(y / np.maximum(floor_h, 1e-3)), index, salt=3)
        glass = (0.1 + 0.3 * scene.sky_horizon * (0.6 + 0.4 * cell[:, None])).astype(np.float32)
        wall = colour * (0.86 + 0.14 * fine) * (0.85 + 0.3 * coarse)
        roof = normal[:, 1] > 0.5
        facade = np.where(window[:, None], glass, np.where(roof[:, None], wall * 0.6, wall))
        albedo[m] = facade[m]
        lit = m & window & (cell < scene.windows_lit)
        warm = np.array([1.0, 0.78, 0.45], np.float32) * (0.5 + 0.5 * cell[:, None])
        emission[lit] = warm[lit]

    m = material == FOLIAGE
    leaf = _hash(np.floor(x * 9), np.floor(y * 9), np.floor(z * 9), salt=4)[:, None]
    clump = _hash(np.floor(x * 2.5), np.floor(y * 2.5), np.floor(z * 2.5), salt=5)[:, None]
    albedo[m] = (colour * (0.45 + 0.7 * leaf * clump + 0.25 * leaf))[m]

    m = material == BODY
    albedo[m] = (colour * (0.92 + 0.08 * fine))[m]
    front = m & (normal[:, 2] < -0.5) & (local[:, 1] > 0.55) & (local[:, 1] < 0.85)
    lamp_x = (np.abs(local[:, 0] - 0.15) < 0.1) | (np.abs(local[:, 0] - 0.85) < 0.1)
    head = front & lamp_x & (aux[:, 0] == HEADLIGHTS)
    tail = front & lamp_x & (aux[:, 0] == TAILLIGHTS)
    albedo[head] = [0.9, 0.9, 0.85]
    albedo[tail] = [0.6, 0.05, 0.04]
    emission[head] = [3.0, 3.0, 2.6]
    emission[tail] = [2.0, 0.15, 0.1]

    m = material == GLASS
    albedo[m] = (np.array([0.06, 0.07, 0.08]) + 0.2 * scene.sky_horizon * (1 + normal[:, 1:2]) / 2)[m]
    albedo[material == TYRE] = [0.05, 0.05, 0.05]
    m = material == LAMP
    albedo[m] = colour[m]
    emission[m] = [3.0, 2.7, 2.1]

    m = material == SIGN
    border = (np.minimum(local[:, 0], 1 - local[:, 0]) < 0.12) | (np.minimum(local[:, 1], 1 - local[:, 1]) < 0.12)
    albedo[m] = np.where(border[:, None], np.array([0.9, 0.9, 0.9]), colour)[m]

    m = material == BRICK
    course = np.maximum(aux[:, 0], 0.1)  # brick height; bricks are twice as long, every other row shifted
    along = np.where(np.abs(normal[:, 0]) > 0.5, z, x) + course * np.mod(np.floor(y / course), 2)
    mortar = (np.mod(y, course) < 0.03) | (np.mod(along, 2 * course) < 0.03)
    albedo[m] = (colour * (0.85 + 0.2 * fine) * np.where(mortar, 1.25, 1.0)[:, None])[m]
    return np.clip(albedo, 0, 1), emission


def render_seed(seed: _SEED, size: tuple[int, int] = IMAGE_SIZE) -> Render:
    """Render the scene that `seed` (an int or a tuple of ints, numpy SeedSequence entropy) determines."""
    return render(sample_scene(np.random.default_rng(seed)), size)
