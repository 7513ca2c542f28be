"""Vectorised numpy renderer of the fixed kitchen camera at any frame size.

The static part (textured background + closed fixtures) is drawn once per frame size and cached; a frame
then only redraws the fixtures that are open, the person, illumination and camera shake. Shapes are drawn
with sub-pixel coverage so a shift of a fraction of a pixel still changes the image smoothly.
"""

from __future__ import annotations

import numpy as np

from .layout import DEFAULT_LAYOUT, KitchenLayout
from .scene import FrameStates

REFERENCE_SIZE = 64  # pixel knobs (fixture motion, camera jitter) are given at this frame size

# The revealed inside is the panel's colour in shadow: a subtle change, as a real opening is from afar.
_INTERIOR_SHADE = 0.6
_TROUSERS = np.array([0.16, 0.17, 0.24])
_SKIN = np.array([0.86, 0.68, 0.56])
PERSON_HEIGHT = 0.42  # of the frame: the person dwarfs any fixture's visible change (P1)


def _clip01(a: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(a, 0.0), 1.0)  # cheaper than np.clip on small arrays


def _cover(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[int, np.ndarray]:
    """Shared first pixel and [T, k] per-pixel coverage of the intervals [lo_t, hi_t) on an axis of n."""
    i0, i1 = max(int(np.floor(lo.min())), 0), min(int(np.ceil(hi.max())), n)
    if i1 <= i0:
        return 0, np.zeros((len(lo), 0))
    idx = np.arange(i0, i1)
    return i0, _clip01(np.minimum(idx + 1, hi[:, None]) - np.maximum(idx, lo[:, None]))


def _box(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[int, int]:
    """Integer pixel range covering [min lo, max hi] on an axis of n, clipped to the image."""
    return max(int(np.floor(lo.min())), 0), min(int(np.ceil(hi.max())) + 1, n)


def _blend(imgs: np.ndarray, y0: int, x0: int, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend a colour into frames [T, 3, H, W] through alpha [T, h, w] placed at (y0, x0)."""
    if alpha.size == 0:
        return
    region = imgs[:, :, y0 : y0 + alpha.shape[1], x0 : x0 + alpha.shape[2]]
    region += (colour[:, None, None] - region) * alpha[:, None]


# Every primitive draws one shape per frame (parameters are [T] arrays) on the union of their boxes, so
# a clip of T frames costs a handful of numpy calls rather than T times as many.


def fill_rects(imgs: np.ndarray, x0, y0, x1, y1, colour: np.ndarray) -> None:
    """Anti-aliased axis-aligned rectangles, pixel coordinates, one per frame."""
    x0, y0, x1, y1 = (np.atleast_1d(np.asarray(v, np.float64)) for v in (x0, y0, x1, y1))
    sx, cx = _cover(x0, x1, imgs.shape[3])
    sy, cy = _cover(y0, y1, imgs.shape[2])
    _blend(imgs, sy, sx, cy[:, :, None] * cx[:, None, :], colour)


def fill_ellipses(imgs: np.ndarray, cx, cy, rx: float, ry: float, colour: np.ndarray) -> None:
    cx, cy = np.atleast_1d(np.asarray(cx, np.float64)), np.atleast_1d(np.asarray(cy, np.float64))
    x0, x1 = _box(cx - rx - 1, cx + rx + 1, imgs.shape[3])
    y0, y1 = _box(cy - ry - 1, cy + ry + 1, imgs.shape[2])
    if x1 <= x0 or y1 <= y0:
        return
    dx = (np.arange(x0, x1)[None] + 0.5 - cx[:, None]) / rx
    dy = (np.arange(y0, y1)[None] + 0.5 - cy[:, None]) / ry
    r = np.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)
    _blend(imgs, y0, x0, _clip01((1.0 - r) * min(rx, ry) + 0.5), colour)


def draw_segments(imgs: np.ndarray, p: np.ndarray, q: np.ndarray, width: float, colour: np.ndarray) -> None:
    """Thick anti-aliased lines from p[t] to q[t] ([T, 2] x, y pixel coordinates)."""
    p, q = np.atleast_2d(p), np.atleast_2d(q)
    pad = width / 2 + 1
    x0, x1 = _box(np.minimum(p[:, 0], q[:, 0]) - pad, np.maximum(p[:, 0], q[:, 0]) + pad, imgs.shape[3])
    y0, y1 = _box(np.minimum(p[:, 1], q[:, 1]) - pad, np.maximum(p[:, 1], q[:, 1]) + pad, imgs.shape[2])
    if x1 <= x0 or y1 <= y0:
        return
    px = (np.arange(x0, x1)[None] + 0.5 - p[:, :1])[:, None, :]  # [T, 1, w]
    py = (np.arange(y0, y1)[None] + 0.5 - p[:, 1:])[:, :, None]  # [T, h, 1]
    u = (q - p)[:, :, None, None]
    along = _clip01((px * u[:, 0] + py * u[:, 1]) / np.maximum((u**2).sum(axis=1), 1e-9))
    dist = np.sqrt((px - along * u[:, 0]) ** 2 + (py - along * u[:, 1]) ** 2)
    _blend(imgs, y0, x0, _clip01(width / 2 - dist + 0.5), colour)


def _shift_with_edge(img: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Camera shake: content moves k pixels along an axis; the uncovered border repeats the edge pixels."""
    n = img.shape[axis]
    k = max(min(k, n - 1), 1 - n)
    if k == 0:
        return img
    out = np.empty_like(img)

    def at(sl: slice) -> tuple[slice, ...]:
        return (slice(None),) * axis + (sl,)

    if k > 0:
        out[at(slice(k, None))] = img[at(slice(None, n - k))]
        out[at(slice(None, k))] = img[at(slice(0, 1))]
    else:
        out[at(slice(None, n + k))] = img[at(slice(-k, None))]
        out[at(slice(n + k, None))] = img[at(slice(n - 1, n))]
    return out


class KitchenRenderer:
    """Renders FrameStates of a kitchen `layout` into uint8 video. The look (texture, colours) is a function of the
    seed."""

    def __init__(self, seed: int, fixture_motion_px: float, layout: KitchenLayout = DEFAULT_LAYOUT) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, 3]))
        self.fixture_motion_px = float(fixture_motion_px)
        self.fixtures = layout.fixtures
        self._wall = np.array([0.80, 0.78, 0.70]) + rng.uniform(-0.08, 0.08, 3)
        self._floor = np.array([0.55, 0.50, 0.44]) + rng.uniform(-0.08, 0.08, 3)
        self._counter = np.array([0.35, 0.33, 0.32]) + rng.uniform(-0.05, 0.05, 3)
        self._texture = (
            rng.uniform(1.0, 14.0, (8, 2)) * rng.choice([-1.0, 1.0], (8, 2)),
            rng.uniform(0, 6.3, 8),
        )
        self._tiles = int(rng.integers(8, 14))
        self._fixture_colour = [
            np.clip(np.array(f.colour) + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0) for f in self.fixtures
        ]
        self._static: dict[tuple[int, int | None], np.ndarray] = {}

    # ---- static part ------------------------------------------------------------------------------

    def static_frame(self, size: int, without: int | None = None) -> np.ndarray:
        """[3, S, S] float32 background with every fixture closed, or with fixture `without` left out
        (so an open fixture is redrawn on clean background). Cached per size."""
        key = (size, without)
        if key not in self._static:
            img = self._background(size)[None]
            for f in range(len(self.fixtures)):
                if f != without:
                    self._draw_fixture(img, f, np.zeros(1), np.zeros(1), size)
            self._static[key] = img[0]
        return self._static[key]

    def _background(self, size: int) -> np.ndarray:
        u = (np.arange(size) + 0.5) / size
        uu, vv = np.meshgrid(u, u)
        freqs, phases = self._texture
        noise = np.zeros_like(uu)
        for (fx, fy), ph in zip(freqs, phases, strict=True):
            noise += np.sin(2 * np.pi * (fx * uu + fy * vv) + ph)
        noise /= np.sqrt(len(phases) / 2)
        tiles = self._tiles
        grout = (0.5 + 0.5 * np.cos(2 * np.pi * tiles * uu)) * (0.5 + 0.5 * np.cos(2 * np.pi * tiles * vv))
        wall = self._wall[:, None, None] * (0.93 + 0.07 * grout + 0.03 * noise)[None]
        checker = np.sign(np.sin(2 * np.pi * 5 * uu) * np.sin(2 * np.pi * 10 * (vv - 0.53)))
        floor = self._floor[:, None, None] * (1.0 + 0.08 * checker + 0.04 * noise)[None]
        img = np.where((vv < 0.53)[None], wall, floor)[None]
        fill_rects(img, 0.40 * size, 0.50 * size, 0.79 * size, 0.535 * size, self._counter)
        return np.clip(img[0], 0.0, 1.0).astype(np.float32)

    def _draw_fixture(
        self, imgs: np.ndarray, f: int, dx: np.ndarray, dy: np.ndarray, size: int, origin: tuple[int, int] = (0, 0)
    ) -> None:
        """Fixture f opened by (dx[t], dy[t]) pixels in frame t: border, face, handle. `imgs` may be a crop
        whose top-left pixel is `origin` (x, y) of the full frame.

        Doors and the fridge swing on a hinge: only their free edge (and handle) moves. Drawers and the
        dishwasher slide: the whole panel moves and uncovers its shaded inside.
        """
        fx = self.fixtures[f]
        ox, oy = origin
        x0, y0, x1, y1 = fx.rect[0] * size - ox, fx.rect[1] * size - oy, fx.rect[2] * size - ox, fx.rect[3] * size - oy
        colour = self._fixture_colour[f]
        if fx.motion[0] != 0.0:
            x0, x1 = x0 + np.minimum(dx, 0.0), x1 + np.maximum(dx, 0.0)
            half_w, half_h = 0.008 * size, 0.04 * size  # vertical bar handle
        else:
            fill_rects(imgs, x0, y0, x1, y1, colour * _INTERIOR_SHADE)
            x0, x1, y0, y1 = x0 + dx, x1 + dx, y0 + dy, y1 + dy
            half_w, half_h = 0.025 * size, 0.008 * size
        border = max(1.0, 0.012 * size)
        fill_rects(imgs, x0, y0, x1, y1, colour * 0.55)
        fill_rects(imgs, x0 + border, y0 + border, x1 - border, y1 - border, colour)
        hx, hy = fx.handle[0] * size - ox + dx, fx.handle[1] * size - oy + dy
        fill_rects(imgs, hx - half_w, hy - half_h, hx + half_w, hy + half_h, colour * 0.3)

    def fixture_shift(self, f: int, extent: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel shift of fixture f's panel at opening extents."""
        amount = np.asarray(extent, np.float64) * self.fixture_motion_px * size / REFERENCE_SIZE
        motion = self.fixtures[f].motion
        return motion[0] * amount, motion[1] * amount

    # ---- frames -----------------------------------------------------------------------------------

    def render(self, states: FrameStates, size: int, shirt: np.ndarray, person: bool = True) -> np.ndarray:
        """uint8 [T, 3, S, S] frames."""
        static = self.static_frame(size)
        frames = np.repeat(static[None], len(states.flicker), axis=0)
        # Open fixtures are redrawn on a crop around them; the closed panel is wiped first (from a static
        # frame without it), so a barely open fixture looks barely changed.
        opened = np.flatnonzero((states.extent > 1e-4).any(axis=0))
        crops = {}
        for f in opened:
            sel = np.flatnonzero(states.extent[:, f] > 1e-4)
            dx, dy = self.fixture_shift(int(f), states.extent[sel, f], size)
            x0, y0, x1, y1 = (c * size for c in self.fixtures[f].rect)
            xs = slice(max(int(x0 + min(dx.min(), 0.0)) - 2, 0), min(int(np.ceil(x1 + max(dx.max(), 0.0))) + 2, size))
            ys = slice(max(int(y0 + min(dy.min(), 0.0)) - 2, 0), min(int(np.ceil(y1 + max(dy.max(), 0.0))) + 2, size))
            frames[sel, :, ys, xs] = self.static_frame(size, without=int(f))[:, ys, xs]
            crops[int(f)] = (sel, dx, dy, ys, xs)
        for f, (sel, dx, dy, ys, xs) in crops.items():
            crop = frames[sel, :, ys, xs]
            self._draw_fixture(crop, f, dx, dy, size, origin=(xs.start, ys.start))
            frames[sel, :, ys, xs] = crop
        if person:
            self._draw_person(frames, states, size, np.asarray(shirt, np.float64))
        frames *= (255.0 * states.flicker).astype(np.float32)[:, None, None, None]
        np.clip(frames, 0.0, 255.0, out=frames)
        frames += 0.5
        video = frames.astype(np.uint8)
        shifts = np.rint(states.jitter * size / REFERENCE_SIZE).astype(np.int64)
        for i in np.flatnonzero(np.any(shifts != 0, axis=1)):
            video[i] = _shift_with_edge(_shift_with_edge(video[i], int(shifts[i, 1]), 1), int(shifts[i, 0]), 2)
        return video

    def _draw_person(self, imgs: np.ndarray, s: FrameStates, size: int, shirt: np.ndarray) -> None:
        x, feet = s.person_x * size, s.person_y * size
        h = PERSON_HEIGHT * size
        swing = np.sin(s.step_phase) * s.moving
        bob = -0.012 * size * np.abs(swing)
        f = s.reach_fixture
        reaching = (f >= 0) & (s.reach > 0)
        handle = np.array([fx.handle for fx in self.fixtures])[np.maximum(f, 0)] * size  # [T, 2]
        for fixture in np.unique(f[reaching]):
            rows = reaching & (f == fixture)
            dx, dy = self.fixture_shift(int(fixture), s.extent[rows, fixture], size)
            handle[rows] += np.stack([dx, dy], axis=1)
        handle += s.rummage * size
        side = np.where(reaching & (handle[:, 0] < x), -1.0, 1.0)  # reach with the arm nearer the handle
        upper = x + side * s.lean * size  # the upper body leans, the feet stay
        hip = np.stack([x + 0.5 * side * s.lean * size, feet - 0.45 * h + bob], axis=1)
        leg_w = 0.032 * size
        draw_segments(imgs, hip, np.stack([x + 0.04 * size * swing, feet], axis=1), leg_w, _TROUSERS)
        draw_segments(imgs, hip, np.stack([x - 0.04 * size * swing, feet], axis=1), leg_w, _TROUSERS)
        fill_ellipses(imgs, upper, feet - 0.66 * h + bob, 0.065 * size, 0.22 * h, shirt)
        fill_ellipses(imgs, upper, feet - 0.92 * h + bob, 0.042 * size, 0.042 * size, _SKIN)
        shoulder = np.stack([upper + side * 0.035 * size, feet - 0.8 * h + bob], axis=1)
        hang = np.stack([shoulder[:, 0] + side * 0.02 * size - 0.03 * size * swing, shoulder[:, 1] + 0.3 * h], 1)
        amount = np.where(reaching, s.reach, 0.0)[:, None]
        hand = hang + amount * (handle - hang)
        draw_segments(imgs, shoulder, hand, 0.022 * size, shirt * 0.8)
        fill_ellipses(imgs, hand[:, 0], hand[:, 1], 0.014 * size, 0.014 * size, _SKIN)
