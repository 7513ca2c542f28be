"""Ground truth of the synthetic kitchen: per recording a timeline of visits, the person's path, and the
raw 30 Hz ambient sensor stream (with its nuisances) that this timeline produces.

Everything a renderer or a window needs is stored on `SceneRecording`, so an exported dataset read back from
disk reproduces the same samples without regenerating anything.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .layout import (
    ACTION_SECONDS,
    ACTIVITIES,
    CLOSE,
    DEFAULT_LAYOUT,
    IDLE_SPOTS,
    NUM_FIXTURES,
    OPEN,
    REED_THRESHOLDS,
    SENSOR_RATE_HZ,
    STEP_LENGTH,
    VISIT_FEET_Y,
    WALK_SPEED,
    Fixture,
    KitchenLayout,
    class_index,
    template_accel,
    template_extent,
)
from .presets import Knobs

# How long the arm takes to reach for the handle before an open and to drop after a close.
REACH_RAMP_S = 0.25
# The body leans back to pull (open) and forward to push (close), and the hand rummages inside while the
# fixture is held open: the person keeps moving far more than the fixture does, even mid-action (P1).
LEAN = 0.04  # frame widths at mid-action
RUMMAGE = 0.05  # frame widths
# A fixture stays open at least this long (seconds at speed 1); knobs.max_hold_s bounds it above.
MIN_HOLD_S = 0.4
# While a fixture is held open the rummaging hand nudges it in and back out (Poisson rate, seconds each way).
NUDGES_PER_S = 1.0
NUDGE_S = 0.3  # in, then the same back out
# Extent a fixture left ajar rests at, capped at half the open extent (so at most 0.5, and about a quarter
# of the rests sit at that cap): a 3-switch fixture's first reed switch (0.15) stays on, the ones at 0.5 off.
AJAR_EXTENT = (0.2, 0.6)
# Frequency band (Hz) of the accelerometers' baseline wander: slower than any action.
WANDER_HZ = (0.03, 0.3)


@dataclass
class SceneRecording:
    """One recording's ground truth. Times are seconds on the sensor clock; the video clock reads
    `t + clock_offset` at sensor time t.

    Not a `detach_framework.data.recordings.Recording` (a reader's stream, per-sample labels and a video file):
    this is the scene the sensor stream was generated from and the video is rendered from on access, and its
    actions are intervals in seconds; the kitchen cuts its windows itself (see dataset.py)."""

    rec_id: int
    subject: int
    activity: int
    duration: float
    clock_offset: float
    speed: float
    amplitude: float
    sensor: np.ndarray  # [C, N] float32 raw stream at SENSOR_RATE_HZ, NaN where packets were lost
    visit_fixture: np.ndarray  # [V] int64
    open_on: np.ndarray  # [V] float64 onset of each visit's open
    open_dur: np.ndarray  # [V]
    close_on: np.ndarray  # [V]
    close_dur: np.ndarray  # [V]
    open_extent: np.ndarray  # [V] how far each visit opens its fixture (1: fully)
    rest_extent: np.ndarray  # [V] where each visit's close leaves it (0: shut; above: left ajar)
    nudge_visit: np.ndarray  # [M] int64 visit during whose hold the hand pushes its fixture in a little
    nudge_on: np.ndarray  # [M] onset of each nudge (in for NUDGE_S, back out for NUDGE_S)
    nudge_depth: np.ndarray  # [M] how far in, in extent units
    kf_t: np.ndarray  # [K] person keyframes: time, feet x, feet y, path length walked so far
    kf_x: np.ndarray
    kf_y: np.ndarray
    kf_s: np.ndarray
    shirt: np.ndarray  # [3] RGB in [0, 1]
    flicker_freq: np.ndarray  # [2] Hz
    flicker_phase: np.ndarray  # [2]
    jitter_freq: np.ndarray  # [2, 3] Hz, per image axis a sum of three sines
    jitter_phase: np.ndarray  # [2, 3]

    SCALARS = ("rec_id", "subject", "activity", "duration", "clock_offset", "speed", "amplitude")

    @classmethod
    def array_fields(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in cls.SCALARS]

    def actions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(onset, duration, fixture, kind) of every open and close, sorted by onset."""
        onset = np.concatenate([self.open_on, self.close_on])
        dur = np.concatenate([self.open_dur, self.close_dur])
        fixture = np.concatenate([self.visit_fixture, self.visit_fixture])
        kind = np.concatenate([np.full(len(self.open_on), OPEN), np.full(len(self.close_on), CLOSE)])
        order = np.argsort(onset, kind="stable")
        return onset[order], dur[order], fixture[order].astype(np.int64), kind[order].astype(np.int64)

    def action_labels(self) -> np.ndarray:
        _, _, fixture, kind = self.actions()
        return np.asarray([class_index(int(f), int(k)) for f, k in zip(fixture, kind, strict=True)], np.int64)


def _seed_entropy(seed: int) -> int:
    return int(seed) & 0xFFFFFFFFFFFFFFFF  # SeedSequence wants a non-negative int


def generate_recordings(knobs: Knobs, seed: int, layout: KitchenLayout = DEFAULT_LAYOUT) -> list[SceneRecording]:
    """All recordings of all subjects, deterministic in (knobs, seed, layout)."""
    recordings: list[SceneRecording] = []
    for subject in range(knobs.subjects):
        traits = np.random.default_rng(np.random.SeedSequence([_seed_entropy(seed), 1, subject]))
        speed = float(np.exp(knobs.speed_spread * traits.standard_normal()).clip(0.6, 1.6))
        amplitude = float(np.exp(knobs.amplitude_spread * traits.standard_normal()).clip(0.5, 2.0))
        first_activity = int(traits.integers(len(ACTIVITIES)))
        shirt = _shirt_colour(traits)
        for r in range(knobs.recordings_per_subject):
            activity = (first_activity + r) % len(ACTIVITIES)
            recordings.append(
                _generate_recording(knobs, layout, seed, len(recordings), subject, r, activity, speed, amplitude, shirt)
            )
    return recordings


def _shirt_colour(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    rgb = 0.5 + 0.35 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
    return rgb.astype(np.float64)


def _generate_recording(
    knobs: Knobs,
    layout: KitchenLayout,
    seed: int,
    rec_id: int,
    subject: int,
    index: int,
    activity: int,
    speed: float,
    amplitude: float,
    shirt: np.ndarray,
) -> SceneRecording:
    # Separate streams per concern, so e.g. switching NaN bursts off leaves the timeline unchanged.
    ss = np.random.SeedSequence([_seed_entropy(seed), 2, subject, index])
    streams = (np.random.default_rng(s) for s in ss.spawn(6))
    timeline_rng, sensor_rng, nan_rng, video_rng, node_rng, extent_rng = streams
    duration = float(knobs.recording_seconds)
    script = layout.routines()[activity]
    visits, keyframes = _timeline(timeline_rng, layout.fixtures, script, duration, speed, knobs.max_hold_s)
    rec = SceneRecording(
        rec_id=rec_id,
        subject=subject,
        activity=activity,
        duration=duration,
        clock_offset=float(video_rng.uniform(-knobs.max_clock_offset_s, knobs.max_clock_offset_s)),
        speed=speed,
        amplitude=amplitude,
        sensor=np.zeros((0, 0), np.float32),
        visit_fixture=np.asarray([v[0] for v in visits], np.int64),
        open_on=np.asarray([v[1] for v in visits], np.float64),
        open_dur=np.asarray([v[2] for v in visits], np.float64),
        close_on=np.asarray([v[3] for v in visits], np.float64),
        close_dur=np.asarray([v[4] for v in visits], np.float64),
        open_extent=np.zeros(0),
        rest_extent=np.zeros(0),
        nudge_visit=np.zeros(0, np.int64),
        nudge_on=np.zeros(0),
        nudge_depth=np.zeros(0),
        kf_t=keyframes[:, 0].copy(),
        kf_x=keyframes[:, 1].copy(),
        kf_y=keyframes[:, 2].copy(),
        kf_s=keyframes[:, 3].copy(),
        shirt=shirt.copy(),
        flicker_freq=np.array([video_rng.uniform(0.2, 1.0), video_rng.uniform(2.0, 5.0)]),
        flicker_phase=video_rng.uniform(0, 2 * np.pi, 2),
        jitter_freq=video_rng.uniform(0.5, 6.0, (2, 3)),
        jitter_phase=video_rng.uniform(0, 2 * np.pi, (2, 3)),
    )
    rec.open_extent, rec.rest_extent = _extents(extent_rng, knobs, rec.visit_fixture)
    rec.nudge_visit, rec.nudge_on, rec.nudge_depth = _nudges(extent_rng, knobs.handling_depth, rec, rec.open_extent)
    rec.sensor = synthesize_sensor(rec, knobs, layout, sensor_rng, nan_rng, node_rng)
    return rec


def _timeline(
    rng: np.random.Generator,
    fixtures: tuple[Fixture, ...],
    script: tuple[int, ...],
    duration: float,
    speed: float,
    max_hold_s: float,
) -> tuple[list[tuple[int, float, float, float, float]], np.ndarray]:
    """Visits (fixture, open onset, open duration, close onset, close duration) cycling through the `script` of
    fixture indices, and person keyframes."""
    x, y = IDLE_SPOTS[int(rng.integers(len(IDLE_SPOTS)))]
    t, walked = 0.0, 0.0
    keyframes = [(0.0, x, y, 0.0)]

    def move(nx: float, ny: float) -> None:
        nonlocal t, x, y, walked
        dist = float(np.hypot(nx - x, ny - y))
        if dist > 1e-9:
            t += dist / (WALK_SPEED * speed)
            walked += dist
            x, y = nx, ny
            keyframes.append((t, x, y, walked))

    def stay(seconds: float) -> None:
        nonlocal t
        if seconds > 0:
            t += seconds
            keyframes.append((t, x, y, walked))

    def walk_time(nx: float, ny: float, fx: float, fy: float) -> float:
        return float(np.hypot(nx - fx, ny - fy)) / (WALK_SPEED * speed)

    stay(rng.uniform(0.0, 2.0))  # the first onset falls anywhere
    visits: list[tuple[int, float, float, float, float]] = []
    step = 0
    while True:
        fixture = script[step % len(script)]
        idle = IDLE_SPOTS[int(rng.integers(len(IDLE_SPOTS)))] if rng.random() < 0.35 else None
        idle_s = rng.uniform(1.0, 3.5)
        spot = (fixtures[fixture].spot + rng.normal(0.0, 0.015), VISIT_FEET_Y)
        approach = rng.uniform(0.3, 0.8)  # the arm reaches out during the last REACH_RAMP_S of it
        open_dur = ACTION_SECONDS / speed * rng.uniform(0.85, 1.15)
        hold = rng.uniform(MIN_HOLD_S, max(max_hold_s, MIN_HOLD_S)) / speed
        close_dur = ACTION_SECONDS / speed * rng.uniform(0.85, 1.15)
        linger = rng.uniform(0.3, 1.0)
        start = (x, y) if idle is None else idle
        need = walk_time(*spot, *start) + approach + open_dur + hold + close_dur + linger
        if idle is not None:
            need += walk_time(*idle, x, y) + idle_s
        if t + need > duration - 0.1:
            break
        if idle is not None:
            move(*idle)
            stay(idle_s)
        move(*spot)
        stay(approach)
        open_on = t
        close_on = open_on + open_dur + hold
        stay(open_dur + hold + close_dur + linger)
        visits.append((fixture, open_on, open_dur, close_on, close_dur))
        step += 1
    if t < duration:
        stay(duration - t)
    return visits, np.asarray(keyframes, np.float64)


def _extents(rng: np.random.Generator, knobs: Knobs, fixtures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per visit: how far it opens its fixture, and where its close leaves it: shut, or (with probability
    knobs.ajar_prob) ajar at AJAR_EXTENT until the fixture's next visit opens it again from there. A rest is
    at most half of both opens around it, so every labelled open moves out and every close moves in."""
    count = len(fixtures)
    opened = rng.uniform(knobs.min_open_extent, 1.0, count)
    ajar = rng.random(count) < knobs.ajar_prob
    rest = np.minimum(np.where(ajar, rng.uniform(*AJAR_EXTENT, count), 0.0), 0.5 * opened)
    for v in range(count):
        later = np.flatnonzero(fixtures[v + 1 :] == fixtures[v])
        if len(later):
            rest[v] = min(rest[v], 0.5 * opened[v + 1 + later[0]])
    return opened, rest


@dataclass(frozen=True)
class Move:
    """One fixture moving from extent `start` to `end` along the shared template."""

    fixture: int
    onset: float
    duration: float
    start: float
    end: float

    @property
    def kind(self) -> int:
        return OPEN if self.end > self.start else CLOSE


def _nudges(
    rng: np.random.Generator, max_depth: float, rec: SceneRecording, open_extent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(visit, onset, depth) of the nudges during every hold: Poisson times, at least one nudge apart."""
    visit, onset = [], []
    for v in range(len(rec.visit_fixture)):
        begin, end = rec.open_on[v] + rec.open_dur[v], rec.close_on[v] - 2 * NUDGE_S
        if max_depth <= 0 or end <= begin:
            continue
        last = -np.inf
        for at in np.sort(rng.uniform(begin, end, rng.poisson(NUDGES_PER_S * (end - begin)))):
            if at >= last + 2 * NUDGE_S:
                visit.append(v)
                onset.append(at)
                last = at
    depth = rng.uniform(0.3, 1.0, len(onset)) * max_depth
    return np.asarray(visit, np.int64), np.asarray(onset, np.float64), np.minimum(depth, open_extent[visit])


def fixture_moves(rec: SceneRecording) -> list[Move]:
    """Every open, nudge and close in onset order; an open starts where the fixture's previous close left
    it. Only opens and closes are labelled actions."""
    moves: list[Move] = []
    level: dict[int, float] = {}
    for v, f in enumerate(rec.visit_fixture.tolist()):
        opened, rest = float(rec.open_extent[v]), float(rec.rest_extent[v])
        moves.append(Move(f, float(rec.open_on[v]), float(rec.open_dur[v]), level.get(f, 0.0), opened))
        mine = rec.nudge_visit == v
        for at, depth in zip(rec.nudge_on[mine], rec.nudge_depth[mine], strict=True):
            moves.append(Move(f, float(at), NUDGE_S, opened, opened - float(depth)))
            moves.append(Move(f, float(at) + NUDGE_S, NUDGE_S, opened - float(depth), opened))
        moves.append(Move(f, float(rec.close_on[v]), float(rec.close_dur[v]), opened, rest))
        level[f] = rest
    return moves  # visits never overlap, so this is onset order


def fixture_extents(rec: SceneRecording, times: np.ndarray, fixtures: int = NUM_FIXTURES) -> np.ndarray:
    """[len(times), F] opening extent of every one of the kitchen's F `fixtures` (the default kitchen's 7)."""
    out = np.zeros((len(times), fixtures))
    if not times.size:
        return out
    first, last = times.min(), times.max()
    for m in fixture_moves(rec):  # in onset order: each move sets its fixture's extent from then on
        if m.onset > last:
            break
        if m.onset + m.duration < first:  # over before these times: only the level it left matters
            out[:, m.fixture] = m.end
            continue
        during = (times >= m.onset) & (times <= m.onset + m.duration)
        lo, hi = min(m.start, m.end), max(m.start, m.end)
        tau = (times[during] - m.onset) / m.duration
        out[during, m.fixture] = lo + (hi - lo) * template_extent(m.kind, tau)
        out[times > m.onset + m.duration, m.fixture] = m.end
    return out


def synthesize_sensor(
    rec: SceneRecording,
    knobs: Knobs,
    layout: KitchenLayout,
    rng: np.random.Generator,
    nan_rng: np.random.Generator,
    node_rng: np.random.Generator,
) -> np.ndarray:
    """The raw [C, N] stream: reed levels, fixture accelerations with cross-talk, footsteps, baseline wander,
    noise, NaN. `node_rng` draws the per-node faults (baseline wander, reed dropout)."""
    channels = layout.channels()
    n = int(round(rec.duration * SENSOR_RATE_HZ))
    t = np.arange(n) / SENSOR_RATE_HZ
    sig = np.zeros((len(channels.names), n))
    axes = np.array([f.axis for f in layout.fixtures])
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    cross = layout.crosstalk()
    accel = channels.accel  # the fixtures with an accelerometer: only they feel motion
    for f, chans in accel.items():
        sig[chans] += np.asarray(layout.fixtures[f].gravity)[:, None]
    extents = fixture_extents(rec, t, len(layout.fixtures))
    for f, chans in channels.reed.items():
        for j, threshold in enumerate(REED_THRESHOLDS[len(chans)]):
            sig[chans[j]] = (extents[:, f] > threshold).astype(np.float64)

    for m in fixture_moves(rec):  # acceleration scales with the distance moved
        strength = rec.amplitude * abs(m.end - m.start) * rng.uniform(0.85, 1.15)
        motion = strength * template_accel(m.kind, (t - m.onset) / m.duration)
        if m.fixture in accel:
            sig[accel[m.fixture]] += axes[m.fixture][:, None] * motion
        for g, chans in accel.items():  # neighbours feel it along their own axes
            if g != m.fixture and knobs.crosstalk_gain * cross[m.fixture, g] > 1e-4:
                sig[chans] += knobs.crosstalk_gain * cross[m.fixture, g] * axes[g][:, None] * motion
    _add_footsteps(sig, rec, t, knobs.walking_vibration_gain, layout.fixtures, accel, rng)
    for chans in accel.values():  # drawn even at gain 0: the dropouts below keep their draws
        sig[chans] += knobs.baseline_wander_gain * _wander(t, len(chans), node_rng)
    sig += knobs.sensor_noise_std * rng.standard_normal(sig.shape)
    for group in channels.groups:  # packet loss drops a whole sensor node at once
        for _ in range(nan_rng.poisson(knobs.nan_burst_rate * rec.duration / 60.0)):
            start = nan_rng.uniform(0.0, rec.duration)
            length = nan_rng.uniform(0.3, 3.0)
            i0, i1 = int(start * SENSOR_RATE_HZ), int((start + length) * SENSOR_RATE_HZ) + 1
            sig[np.ix_(group, np.arange(i0, min(i1, n)))] = np.nan
    for chans in channels.reed.values():  # a reed node with a flat battery sends nothing all recording
        if node_rng.random() < knobs.reed_dropout_prob:
            sig[chans] = np.nan
    return sig.astype(np.float32)


def _wander(t: np.ndarray, channels: int, rng: np.random.Generator) -> np.ndarray:
    """[channels, len(t)] slow baseline wander of an accelerometer (bias drift with temperature, the mount
    settling): a sum of slow sines, unit std per channel."""
    freq = rng.uniform(WANDER_HZ[0], WANDER_HZ[1], (channels, 4, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (channels, 4, 1))
    return np.sin(2 * np.pi * freq * t + phase).sum(axis=1) / np.sqrt(2.0)


def _add_footsteps(
    sig: np.ndarray,
    rec: SceneRecording,
    t: np.ndarray,
    gain: float,
    fixtures: tuple[Fixture, ...],
    accel: dict[int, np.ndarray],
    rng: np.random.Generator,
) -> None:
    """Each footstep rings every accelerometer, louder near the person."""
    walked = np.interp(t, rec.kf_t, rec.kf_s)
    steps = np.floor(walked / STEP_LENGTH)
    impulses = (np.diff(steps, prepend=steps[0]) > 0).astype(np.float64)
    k = np.arange(12)
    ringing = np.exp(-k / 2.5) * np.sin(2 * np.pi * 0.3 * (k + 0.5))  # ~9 Hz, decays in ~0.1 s
    vibration = np.convolve(impulses, ringing)[: len(t)]
    person_x = np.interp(t, rec.kf_t, rec.kf_x)
    for f, chans in accel.items():
        centre = (fixtures[f].rect[0] + fixtures[f].rect[2]) / 2
        nearness = 1.0 / (1.0 + ((person_x - centre) / 0.25) ** 2)
        projection = rng.uniform(0.5, 1.0, 3) * rng.choice([-1.0, 1.0], 3)
        sig[chans] += gain * projection[:, None] * (nearness * vibration)[None]


@dataclass
class FrameStates:
    """Everything the renderer needs per frame (T frames)."""

    person_x: np.ndarray  # [T] feet position, normalised
    person_y: np.ndarray  # [T]
    step_phase: np.ndarray  # [T] radians of the gait cycle
    moving: np.ndarray  # [T] 1 while walking, else 0
    reach: np.ndarray  # [T] 0 arm down .. 1 hand on the handle
    reach_fixture: np.ndarray  # [T] int, -1 when not reaching
    lean: np.ndarray  # [T] upper-body offset toward the handle, frame widths (negative: away)
    rummage: np.ndarray  # [T, 2] hand offset from the handle while the fixture is held open, frame widths
    extent: np.ndarray  # [T, F] opening extent per fixture
    flicker: np.ndarray  # [T] global illumination gain
    jitter: np.ndarray  # [T, 2] camera shake (dx, dy) in pixels at a 64-pixel frame


def frame_states(
    rec: SceneRecording,
    video_times: np.ndarray,
    flicker_amplitude: float,
    jitter_px: float,
    fixtures: int = NUM_FIXTURES,
) -> FrameStates:
    """Scene state at times on the video clock (already offset) in a kitchen of `fixtures` fixtures (the default
    kitchen's 7); times past either end clamp."""
    t = np.clip(np.asarray(video_times, np.float64), 0.0, rec.duration)
    walked = np.interp(t, rec.kf_t, rec.kf_s)
    dt = 0.02
    moving = (np.interp(t + dt, rec.kf_t, rec.kf_s) - np.interp(t - dt, rec.kf_t, rec.kf_s)) > 1e-9
    reach = np.zeros_like(t)
    reach_fixture = np.full(len(t), -1, np.int64)
    lean = np.zeros_like(t)
    rummage = np.zeros((len(t), 2))
    for v in range(len(rec.visit_fixture)):
        if t.min() > rec.close_on[v] + rec.close_dur[v] + REACH_RAMP_S or t.max() < rec.open_on[v] - REACH_RAMP_S:
            continue  # this visit leaves no trace on these frames
        rise = np.clip((t - (rec.open_on[v] - REACH_RAMP_S)) / REACH_RAMP_S, 0.0, 1.0)
        fall = np.clip(((rec.close_on[v] + rec.close_dur[v] + REACH_RAMP_S) - t) / REACH_RAMP_S, 0.0, 1.0)
        amount = np.minimum(rise, fall)
        take = amount > reach
        reach[take] = amount[take]
        reach_fixture[take] = rec.visit_fixture[v]
        opening = np.clip((t - rec.open_on[v]) / rec.open_dur[v], 0.0, 1.0)
        closing = np.clip((t - rec.close_on[v]) / rec.close_dur[v], 0.0, 1.0)
        lean += LEAN * (np.sin(np.pi * closing) - np.sin(np.pi * opening))
        held_from = rec.open_on[v] + rec.open_dur[v]
        held = np.clip((t - held_from) / max(rec.close_on[v] - held_from, 1e-6), 0.0, 1.0)
        envelope = RUMMAGE * np.sin(np.pi * held)
        since = t - held_from
        rummage += envelope[:, None] * np.stack(
            [np.sin(2 * np.pi * 1.7 * since), 0.6 * np.sin(2 * np.pi * 1.1 * since)], 1
        )
    flicker = 1.0 + flicker_amplitude * (
        0.6 * np.sin(2 * np.pi * rec.flicker_freq[0] * t + rec.flicker_phase[0])
        + 0.4 * np.sin(2 * np.pi * rec.flicker_freq[1] * t + rec.flicker_phase[1])
    )
    waves = np.sin(2 * np.pi * rec.jitter_freq[None] * t[:, None, None] + rec.jitter_phase[None])
    jitter = jitter_px * waves.sum(axis=-1) / np.sqrt(1.5)  # unit std per axis before scaling
    return FrameStates(
        person_x=np.interp(t, rec.kf_t, rec.kf_x),
        person_y=np.interp(t, rec.kf_t, rec.kf_y),
        step_phase=2 * np.pi * walked / (2 * STEP_LENGTH),
        moving=moving.astype(np.float64),
        reach=reach,
        reach_fixture=reach_fixture,
        lean=lean,
        rummage=rummage,
        extent=fixture_extents(rec, t, fixtures),
        flicker=flicker,
        jitter=jitter,
    )
