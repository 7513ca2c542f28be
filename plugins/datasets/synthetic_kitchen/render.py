"""Vectorised numpy renderer of the fixed kitchen camera at any frame size.

The static part (textured background + closed fixtures) is drawn once per frame size and cached; a frame
then only redraws the fixtures that are open, the person, illumination and camera shake. Shapes are drawn
with sub-pixel coverage so a shift of a fraction of a pixel still changes the image smoothly.
"""

from __future__ import annotations

import numpy as np

from .layout import FIXTURES, NUM_FIXTURES
from .scene import FrameStates

REFERENCE_SIZE = 64  # pixel knobs (fixture motion, camera jitter) are given at this frame size

_INTERIOR = np.array([0.10, 0.09, 0.08])
_TROUSERS = np.array([0.16, 0.17, 0.24])
_SKIN = np.array([0.86, 0.68, 0.56])
_FIXTURE_BASE = {
    "door1": (0.55, 0.38, 0.22),
    "door2": (0.50, 0.34, 0.20),
    "fridge": (0.88, 0.89, 0.90),
    "dishwasher": (0.62, 0.64, 0.66),
    "drawer1": (0.78, 0.66, 0.48),
    "drawer2": (0.78, 0.66, 0.48),
    "drawer3": (0.78, 0.66, 0.48),
}
PERSON_HEIGHT = 0.42  # of the frame: the person dwarfs any fixture's visible change (P1)


def _span(lo: float, hi: float, n: int) -> tuple[int, np.ndarray]:
    """First pixel index and per-pixel coverage of the interval [lo, hi) on a pixel axis of length n."""
    i0, i1 = max(int(np.floor(lo)), 0), min(int(np.ceil(hi)), n)
    if i1 <= i0:
        return 0, np.zeros(0)
    idx = np.arange(i0, i1)
    return i0, np.clip(np.minimum(idx + 1, hi) - np.maximum(idx, lo), 0.0, 1.0)


def _blend(img: np.ndarray, y0: int, x0: int, alpha: np.ndarray, colour: np.ndarray) -> None:
    if alpha.size == 0:
        return
    region = img[:, y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
    region += (colour[:, None, None] - region) * alpha[None]


def fill_rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: np.ndarray) -> None:
    """Anti-aliased axis-aligned rectangle in pixel coordinates."""
    sx, cx = _span(x0, x1, img.shape[2])
    sy, cy = _span(y0, y1, img.shape[1])
    _blend(img, sy, sx, cy[:, None] * cx[None, :], colour)


def fill_ellipse(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, colour: np.ndarray) -> None:
    h, w = img.shape[1:]
    x0, x1 = max(int(cx - rx - 1), 0), min(int(cx + rx + 2), w)
    y0, y1 = max(int(cy - ry - 1), 0), min(int(cy + ry + 2), h)
    if x1 <= x0 or y1 <= y0:
        return
    dx = (np.arange(x0, x1) + 0.5 - cx) / rx
    dy = (np.arange(y0, y1) + 0.5 - cy) / ry
    r = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    _blend(img, y0, x0, np.clip((1.0 - r) * min(rx, ry) + 0.5, 0.0, 1.0), colour)


def draw_segment(
    img: np.ndarray, p: tuple[float, float], q: tuple[float, float], width: float, colour: np.ndarray
) -> None:
    """Thick anti-aliased line from p to q (x, y pixel coordinates)."""
    h, w = img.shape[1:]
    pad = width / 2 + 1
    x0, x1 = max(int(min(p[0], q[0]) - pad), 0), min(int(max(p[0], q[0]) + pad + 1), w)
    y0, y1 = max(int(min(p[1], q[1]) - pad), 0), min(int(max(p[1], q[1]) + pad + 1), h)
    if x1 <= x0 or y1 <= y0:
        return
    px = np.arange(x0, x1)[None, :] + 0.5 - p[0]
    py = np.arange(y0, y1)[:, None] + 0.5 - p[1]
    ux, uy = q[0] - p[0], q[1] - p[1]
    along = np.clip((px * ux + py * uy) / max(ux * ux + uy * uy, 1e-9), 0.0, 1.0)
    dist = np.sqrt((px - along * ux) ** 2 + (py - along * uy) ** 2)
    _blend(img, y0, x0, np.clip(width / 2 - dist + 0.5, 0.0, 1.0), colour)


class KitchenRenderer:
    """Renders FrameStates into uint8 video. The look (texture, colours) is a function of the seed."""

    def __init__(self, seed: int, fixture_motion_px: float) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, 3]))
        self.fixture_motion_px = float(fixture_motion_px)
        self._wall = np.array([0.80, 0.78, 0.70]) + rng.uniform(-0.08, 0.08, 3)
        self._floor = np.array([0.55, 0.50, 0.44]) + rng.uniform(-0.08, 0.08, 3)
        self._counter = np.array([0.35, 0.33, 0.32]) + rng.uniform(-0.05, 0.05, 3)
        self._texture = (rng.uniform(1.0, 14.0, (8, 2)) * rng.choice([-1.0, 1.0], (8, 2)), rng.uniform(0, 6.3, 8))
        self._tiles = int(rng.integers(8, 14))
        self._fixture_colour = [
            np.clip(np.array(_FIXTURE_BASE[f.name]) + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0) for f in FIXTURES
        ]
        self._static: dict[int, np.ndarray] = {}

    # ---- static part ------------------------------------------------------------------------------

    def static_frame(self, size: int) -> np.ndarray:
        """[3, S, S] float32 background with every fixture closed (cached per size)."""
        if size not in self._static:
            img = self._background(size)
            for f in range(NUM_FIXTURES):
                self._draw_fixture(img, f, 0.0, 0.0, size)
            self._static[size] = img
        return self._static[size]

    def _background(self, size: int) -> np.ndarray:
        u = (np.arange(size) + 0.5) / size
        uu, vv = np.meshgrid(u, u)
        freqs, phases = self._texture
        noise = np.zeros_like(uu)
        for (fx, fy), ph in zip(freqs, phases, strict=True):
            noise += np.sin(2 * np.pi * (fx * uu + fy * vv) + ph)
        noise /= np.sqrt(len(phases) / 2)
        grout = (0.5 + 0.5 * np.cos(2 * np.pi * self._tiles * uu)) * (0.5 + 0.5 * np.cos(2 * np.pi * self._tiles * vv))
        wall = self._wall[:, None, None] * (0.93 + 0.07 * grout + 0.03 * noise)[None]
        checker = np.sign(np.sin(2 * np.pi * 5 * uu) * np.sin(2 * np.pi * 10 * (vv - 0.53)))
        floor = self._floor[:, None, None] * (1.0 + 0.08 * checker + 0.04 * noise)[None]
        img = np.where((vv < 0.53)[None], wall, floor)
        fill_rect(img, 0.40 * size, 0.50 * size, 0.79 * size, 0.535 * size, self._counter)
        return np.clip(img, 0.0, 1.0).astype(np.float32)

    def _draw_fixture(self, img: np.ndarray, f: int, dx: float, dy: float, size: int) -> None:
        """The panel of fixture f shifted by (dx, dy) pixels: border, face, handle."""
        fx = FIXTURES[f]
        x0, y0, x1, y1 = (c * size for c in fx.rect)
        colour = self._fixture_colour[f]
        border = max(1.0, 0.012 * size)
        fill_rect(img, x0 + dx, y0 + dy, x1 + dx, y1 + dy, colour * 0.55)
        fill_rect(img, x0 + dx + border, y0 + dy + border, x1 + dx - border, y1 + dy - border, colour)
        hx, hy = fx.handle[0] * size + dx, fx.handle[1] * size + dy
        if fx.motion[0] != 0.0:  # doors and fridge: vertical bar handle
            half_w, half_h = 0.008 * size, 0.04 * size
        else:
            half_w, half_h = 0.025 * size, 0.008 * size
        fill_rect(img, hx - half_w, hy - half_h, hx + half_w, hy + half_h, colour * 0.3)

    def fixture_shift(self, f: int, extent: float, size: int) -> tuple[float, float]:
        """Pixel shift of fixture f's panel at an opening extent."""
        amount = extent * self.fixture_motion_px * size / REFERENCE_SIZE
        return FIXTURES[f].motion[0] * amount, FIXTURES[f].motion[1] * amount

    # ---- frames -----------------------------------------------------------------------------------

    def render(self, states: FrameStates, size: int, shirt: np.ndarray, person: bool = True) -> np.ndarray:
        """uint8 [T, 3, S, S] frames."""
        static = self.static_frame(size)
        frames = np.repeat(static[None], len(states.flicker), axis=0)
        for i, img in enumerate(frames):
            for f in np.flatnonzero(states.extent[i] > 1e-4):
                x0, y0, x1, y1 = (c * size for c in FIXTURES[f].rect)
                fill_rect(img, x0, y0, x1, y1, _INTERIOR)  # the opening reveals the dark inside
                self._draw_fixture(img, int(f), *self.fixture_shift(int(f), states.extent[i, f], size), size)
            if person:
                self._draw_person(img, states, i, size, shirt)
        frames *= states.flicker.astype(np.float32)[:, None, None, None]
        shifts = np.rint(states.jitter * size / REFERENCE_SIZE).astype(np.int64)
        for i in np.flatnonzero(np.any(shifts != 0, axis=1)):
            # Shake moves the whole view; the border repeats its edge pixels.
            ys = np.clip(np.arange(size) - shifts[i, 1], 0, size - 1)
            xs = np.clip(np.arange(size) - shifts[i, 0], 0, size - 1)
            frames[i] = frames[i][:, ys][:, :, xs]
        return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _draw_person(self, img: np.ndarray, s: FrameStates, i: int, size: int, shirt: np.ndarray) -> None:
        x, feet = s.person_x[i] * size, s.person_y[i] * size
        h = PERSON_HEIGHT * size
        swing = np.sin(s.step_phase[i]) * s.moving[i]
        bob = -0.012 * size * abs(swing)
        hip = (x, feet - 0.45 * h + bob)
        leg_w = 0.032 * size
        draw_segment(img, hip, (x + 0.04 * size * swing, feet), leg_w, _TROUSERS)
        draw_segment(img, hip, (x - 0.04 * size * swing, feet), leg_w, _TROUSERS)
        fill_ellipse(img, x, feet - 0.66 * h + bob, 0.055 * size, 0.22 * h, shirt)
        fill_ellipse(img, x, feet - 0.92 * h + bob, 0.042 * size, 0.042 * size, _SKIN)
        f = int(s.reach_fixture[i])
        side = 1.0 if f < 0 else float(np.sign(FIXTURES[f].handle[0] * size - x) or 1.0)
        shoulder = (x + side * 0.035 * size, feet - 0.8 * h + bob)
        hand = (shoulder[0] + side * 0.02 * size - 0.03 * size * swing, shoulder[1] + 0.3 * h)
        if f >= 0 and s.reach[i] > 0:
            dx, dy = self.fixture_shift(f, s.extent[i, f], size)
            grip = (FIXTURES[f].handle[0] * size + dx, FIXTURES[f].handle[1] * size + dy)
            hand = (hand[0] + s.reach[i] * (grip[0] - hand[0]), hand[1] + s.reach[i] * (grip[1] - hand[1]))
        draw_segment(img, shoulder, hand, 0.022 * size, shirt * 0.8)
        fill_ellipse(img, hand[0], hand[1], 0.014 * size, 0.014 * size, _SKIN)
