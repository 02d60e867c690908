"""Pictures of the cluster for ``render_mode="rgb_array"`` and ``"human"``.

Why a module of its own: drawing must not depend on the env's internals (they change for speed),
so the env hands over a :class:`RenderState` of plain numbers and this module turns it into an
``[H, W, 3]`` uint8 image. Shapes are drawn with numpy only, so ``rgb_array`` works with the
package's core dependencies; Pillow, when installed (it comes with matplotlib), adds the text
labels. ``human`` shows the frame in a matplotlib window; without a display it warns once and
shows nothing, as a headless run (rl-zoo3's ``enjoy``, CI) needs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import error, logger

__all__ = ["FRAME_SHAPE", "RENDER_MODES", "RenderState", "Renderer", "draw_frame"]

#: Render modes of the single env: text, a picture as an array, a picture in a window.
RENDER_MODES = ("ansi", "rgb_array", "human")
#: Height, width and channels of a frame (multiples of 16, as video encoders prefer).
FRAME_SHAPE = (320, 512, 3)

_BACKGROUND = (248, 248, 244)
_INK = (40, 40, 48)
_MUTED = (150, 150, 158)
_PANEL = (228, 230, 236)
_TITLE = (44, 62, 96)
_LOW, _MID, _HIGH = (214, 64, 64), (232, 178, 44), (60, 170, 96)


@dataclass(frozen=True)
class RenderState:
    """What one frame shows, as plain data filled in by the env.

    :param topology: ``"parallel"`` (one branch per device, exits fuse at an aggregator) or
        ``"pipeline"`` (one backbone cut across devices in sequence).
    :param compute: available compute share of each device, in [0, 1].
    :param bandwidth: available bandwidth share of each device's link, in [0, 1].
    :param exit_index: the current exit k of the current request.
    :param num_exits: the number of exits K.
    :param max_prob: the current exit's confidence (its largest class probability).
    :param feature_diff: DistrEE's feature difference to the previous exit, in [0, 1].
    :param elapsed_ratio: time since the current request arrived, over its deadline.
    :param request_index: index of the current request in the episode (0-based), or in the
        stream when every request is an episode (``requests_per_episode == 1``, v2).
    :param requests_per_episode: requests in an episode.
    :param queue_len: requests waiting behind the current one.
    :param queue_capacity: the queue's capacity (0: isolated requests, no queue).
    :param oldest_wait_ratio: age of the oldest waiting request over the deadline.
    :param last_request: ``(exit, correct, deadline_met)`` of the request that ended last, or None.
    :param episode_over: True after the episode's last decision.
    """

    topology: str
    compute: tuple[float, ...]
    bandwidth: tuple[float, ...]
    exit_index: int
    num_exits: int
    max_prob: float
    feature_diff: float
    elapsed_ratio: float
    request_index: int
    requests_per_episode: int
    queue_len: int = 0
    queue_capacity: int = 0
    oldest_wait_ratio: float = 0.0
    last_request: tuple[int, bool, bool] | None = None
    episode_over: bool = False

    def __post_init__(self) -> None:
        if len(self.compute) != len(self.bandwidth) or not self.compute:
            raise ValueError(
                f"compute has {len(self.compute)} entries and bandwidth {len(self.bandwidth)}: "
                "give one compute and one bandwidth share per device (at least one device)"
            )
        if not 0 <= self.exit_index < self.num_exits:
            raise ValueError(
                f"exit_index={self.exit_index!r} is not allowed: 0 <= exit_index < "
                f"num_exits={self.num_exits}"
            )

    @classmethod
    def from_observation(
        cls,
        names: Sequence[str],
        obs: np.ndarray,
        *,
        topology: str,
        num_exits: int,
        request_index: int,
        requests_per_episode: int,
        queue_capacity: int = 0,
        last_request: tuple[int, bool, bool] | None = None,
        episode_over: bool = False,
    ) -> RenderState:
        """Build a state from an observation and its ``observation_names`` (the documented
        layout), so the picture shows exactly what the agent sees.

        :param names: ``env.observation_names``.
        :param obs: the observation (1-d, same length as ``names``).
        :param topology: see the class.
        :param num_exits: K (the exit index is ``progress * (K - 1)``).
        :param request_index: see the class.
        :param requests_per_episode: see the class.
        :param queue_capacity: see the class (``queue_len`` is observed as a share of it).
        :param last_request: see the class.
        :param episode_over: see the class.
        """
        value = dict(zip(names, np.asarray(obs, dtype=np.float64).tolist(), strict=True))
        devices = sum(1 for n in names if n.startswith("compute_"))
        return cls(
            topology=topology,
            compute=tuple(value[f"compute_{d}"] for d in range(devices)),
            bandwidth=tuple(value[f"bandwidth_{d}"] for d in range(devices)),
            exit_index=round(value["progress"] * (num_exits - 1)),
            num_exits=num_exits,
            max_prob=value["max_prob"],
            feature_diff=value["feature_diff"],
            elapsed_ratio=value["elapsed_ratio"],
            request_index=request_index,
            requests_per_episode=requests_per_episode,
            queue_len=round(value.get("queue_len", 0.0) * queue_capacity),
            queue_capacity=queue_capacity,
            oldest_wait_ratio=value.get("oldest_wait_ratio", 0.0),
            last_request=last_request,
            episode_over=episode_over,
        )


# ---- numpy drawing primitives -------------------------------------------------------------------
def _level_color(level: float) -> tuple[int, int, int]:
    """Red (0) through amber (0.5) to green (1): how much of a resource is available."""
    t = min(max(level, 0.0), 1.0)
    a, b, u = (_LOW, _MID, 2 * t) if t < 0.5 else (_MID, _HIGH, 2 * t - 1)
    return tuple(round(x + (y - x) * u) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _fill(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: Any) -> None:
    h, w = img.shape[:2]
    img[max(int(y0), 0) : min(int(y1), h), max(int(x0), 0) : min(int(x1), w)] = color


def _box(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: Any) -> None:
    _fill(img, x0, y0, x1, y0 + 1, color)
    _fill(img, x0, y1 - 1, x1, y1, color)
    _fill(img, x0, y0, x0 + 1, y1, color)
    _fill(img, x1 - 1, y0, x1, y1, color)


def _line(img: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], color: Any,
          width: float) -> None:  # fmt: skip
    """A segment of the given width: pixels whose distance to it is at most ``width / 2``."""
    (x0, y0), (x1, y1), r = p0, p1, width / 2
    h, w = img.shape[:2]
    xa, xb = max(int(min(x0, x1) - r), 0), min(int(max(x0, x1) + r) + 1, w)
    ya, yb = max(int(min(y0, y1) - r), 0), min(int(max(y0, y1) + r) + 1, h)
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float64)
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    near = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= r
    img[ya:yb, xa:xb][near] = color


class _Labels:
    """Text to put on the frame; drawn by Pillow when it is installed, else left out."""

    def __init__(self) -> None:
        self.items: list[tuple[float, float, str, tuple[int, int, int], int]] = []

    def add(self, x: float, y: float, text: str, color: tuple[int, int, int] = _INK,
            size: int = 11) -> None:  # fmt: skip
        self.items.append((x, y, text, color, size))

    def draw(self, img: np.ndarray) -> np.ndarray:
        try:
            from PIL import Image, ImageDraw
        except ImportError:
            return img
        pic = Image.fromarray(img)
        pen = ImageDraw.Draw(pic)
        for x, y, text, color, size in self.items:
            pen.text((x, y), text, fill=color, font=_font(size))
        return np.asarray(pic, dtype=np.uint8).copy()


@functools.cache
def _font(size: int) -> Any:
    """Pillow's built-in font at ``size`` pixels (loaded once per size)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


# ---- the frame ------------------------------------------------------------------------------
def draw_frame(state: RenderState) -> np.ndarray:
    """The picture of one state: ``FRAME_SHAPE`` uint8 RGB.

    Top: devices (bar = available compute) and their links (colour and width = available
    bandwidth). Right: the request queue. Bottom: the exits of the current request (passed,
    current with its confidence), the time spent against the deadline, the last request's outcome.

    :param state: what to draw.
    """
    img = np.empty(FRAME_SHAPE, dtype=np.uint8)
    img[:] = _BACKGROUND
    text = _Labels()
    h, w = FRAME_SHAPE[:2]
    _fill(img, 0, 0, w, 24, _TITLE)
    title = f"DistrEE ({state.topology})   request {state.request_index + 1}"
    if state.requests_per_episode > 1:
        title += f"/{state.requests_per_episode}"
    title += f"   exit {state.exit_index}/{state.num_exits - 1}"
    if state.episode_over:
        title += "   episode over"
    text.add(8, 5, title, (255, 255, 255), 13)
    _draw_cluster(img, text, state, 8, 32, 352, 196)
    _draw_queue(img, text, state, 364, 32, w - 8, 196)
    _draw_exits(img, text, state, 8, 206, w - 8, 250)
    _draw_deadline(img, text, state, 8, 258, w - 8, 288)
    if state.last_request is not None:
        k, correct, met = state.last_request
        verdict = ("correct" if correct else "wrong") + (", on time" if met else ", LATE")
        color = _HIGH if correct and met else _LOW
        _fill(img, 8, 298, 18, 308, color)
        text.add(24, 296, f"last request: exit {k}, {verdict}")
    return text.draw(img)


def _draw_cluster(img: np.ndarray, text: _Labels, s: RenderState, x0: int, y0: int, x1: int,
                  y1: int) -> None:  # fmt: skip
    _fill(img, x0, y0, x1, y1, _PANEL)
    text.add(x0 + 6, y0 + 4, "devices (compute) and links (bandwidth)", _MUTED)
    d = len(s.compute)
    slot = (x1 - x0) / d
    bw_box, top, bottom = min(slot * 0.6, 64), y1 - 78, y1 - 18
    centers = [x0 + slot * (i + 0.5) for i in range(d)]
    if s.topology == "pipeline":
        # data flows device 0 -> 1 -> ... ; link i carries device i's output onward
        for i, c in enumerate(centers):
            end = centers[i + 1] - bw_box / 2 if i + 1 < d else x1 - 4
            y = (top + bottom) / 2
            _line(img, (c + bw_box / 2, y), (end, y), _level_color(s.bandwidth[i]),
                  2 + 6 * s.bandwidth[i])  # fmt: skip
            text.add(c + bw_box / 2 + 2, y - 18, f"{s.bandwidth[i]:.0%}", _INK, 10)
    else:
        # parallel: every device sends its features to the aggregator, where the exits fuse
        ax, ay = (x0 + x1) / 2, y0 + 34
        _fill(img, ax - 44, ay - 12, ax + 44, ay + 10, _TITLE)
        text.add(ax - 34, ay - 9, "aggregator", (255, 255, 255), 11)
        for i, c in enumerate(centers):
            _line(img, (c, top), (ax, ay + 10), _level_color(s.bandwidth[i]),
                  2 + 6 * s.bandwidth[i])  # fmt: skip
            mx, my = (c + ax) / 2, (top + ay + 10) / 2
            text.add(mx + 6, my - 6, f"{s.bandwidth[i]:.0%}", _INK, 10)
    for i, c in enumerate(centers):
        bx0, bx1 = c - bw_box / 2, c + bw_box / 2
        _fill(img, bx0, top, bx1, bottom, (255, 255, 255))
        level = min(max(s.compute[i], 0.0), 1.0)
        _fill(img, bx0 + 4, bottom - 4 - (bottom - top - 8) * level, bx1 - 4, bottom - 4,
              _level_color(level))  # fmt: skip
        _box(img, bx0, top, bx1, bottom, _INK)
        text.add(bx0, bottom + 2, f"dev {i}: {s.compute[i]:.0%}", _INK, 10)


def _draw_queue(img: np.ndarray, text: _Labels, s: RenderState, x0: int, y0: int, x1: int,
                y1: int) -> None:  # fmt: skip
    _fill(img, x0, y0, x1, y1, _PANEL)
    if s.queue_capacity <= 0:
        text.add(x0 + 6, y0 + 4, "queue: none (isolated)", _MUTED)
        return
    text.add(x0 + 6, y0 + 4, f"queue {s.queue_len}/{s.queue_capacity}", _INK)
    cols = min(s.queue_capacity, 8)
    rows = -(-s.queue_capacity // cols)
    cell = min((x1 - x0 - 12) / cols, (y1 - y0 - 60) / max(rows, 1))
    for q in range(s.queue_capacity):
        cx, cy = x0 + 6 + (q % cols) * cell, y0 + 24 + (q // cols) * cell
        _box(img, cx, cy, cx + cell - 2, cy + cell - 2, _MUTED)
        if q < s.queue_len:
            _fill(img, cx + 2, cy + 2, cx + cell - 4, cy + cell - 4, _TITLE)
    wait = s.oldest_wait_ratio
    text.add(x0 + 6, y1 - 30, f"oldest wait {wait:.2f} x deadline", _LOW if wait > 1 else _INK)


def _draw_exits(img: np.ndarray, text: _Labels, s: RenderState, x0: int, y0: int, x1: int,
                y1: int) -> None:  # fmt: skip
    k_all = s.num_exits
    width = min((x1 - x0 - 200) / k_all, 72)
    for k in range(k_all):
        bx = x0 + k * width
        if k < s.exit_index:
            _fill(img, bx, y0, bx + width - 4, y1, _MUTED)
        elif k == s.exit_index:
            _fill(img, bx, y0, bx + width - 4, y1, _level_color(s.max_prob))
        _box(img, bx, y0, bx + width - 4, y1, _INK)
        text.add(bx + 6, y0 + 4, f"exit {k}", _INK, 10)
    cur = x0 + s.exit_index * width
    text.add(cur + 6, y0 + 20, f"{s.max_prob:.2f}", _INK, 10)
    tx = x0 + k_all * width + 8
    text.add(tx, y0 + 2, f"confidence {s.max_prob:.2f}")
    text.add(tx, y0 + 20, f"feature diff {s.feature_diff:.2f}")


def _draw_deadline(img: np.ndarray, text: _Labels, s: RenderState, x0: int, y0: int, x1: int,
                   y1: int) -> None:  # fmt: skip
    span = 1.5  # the bar shows up to 1.5 deadlines; the mark sits at the deadline
    bar_x1 = x1 - 200
    scale = (bar_x1 - x0) / span
    ratio = max(s.elapsed_ratio, 0.0)
    _fill(img, x0, y0 + 6, bar_x1, y1 - 6, _PANEL)
    color = _LOW if ratio > 1 else _level_color(1 - ratio)
    _fill(img, x0, y0 + 6, x0 + scale * min(ratio, span), y1 - 6, color)
    _fill(img, x0 + scale - 1, y0, x0 + scale + 1, y1, _INK)
    text.add(bar_x1 + 8, y0 + 7, f"elapsed {ratio:.2f} x deadline", _LOW if ratio > 1 else _INK)


# ---- showing frames -----------------------------------------------------------------------
class Renderer:
    """Turns states into what ``env.render()`` returns for ``rgb_array`` and ``human``.

    :param render_mode: ``"rgb_array"`` (return the frame) or ``"human"`` (show it in a
        matplotlib window at ``fps`` frames per second; returns None).
    :param fps: frames per second of the ``human`` window.
    """

    def __init__(self, render_mode: str, fps: float) -> None:
        if render_mode not in ("rgb_array", "human"):
            raise ValueError(f"render_mode={render_mode!r} is not allowed: 'rgb_array' or 'human'")
        self.render_mode, self.fps = render_mode, fps
        self._window: Any = None
        self._headless = False

    def render(self, state: RenderState) -> np.ndarray | None:
        """The frame (``rgb_array``) or None after showing it (``human``).

        :param state: what to draw.
        """
        if self.render_mode == "rgb_array":
            return draw_frame(state)
        if not self._headless and self._window_possible():
            self._show(draw_frame(state))
        return None

    def _window_possible(self) -> bool:
        """Whether matplotlib can open a window; warns once (and remembers) when it cannot."""
        try:
            import matplotlib.pyplot as plt
            from matplotlib.backends import BackendFilter, backend_registry
        except ImportError as exc:
            raise error.DependencyNotInstalled(
                "render_mode='human' needs matplotlib: pip install matplotlib"
            ) from exc
        non_interactive = backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)
        if plt.get_backend().lower() in non_interactive:
            logger.warn(
                f"render_mode='human': matplotlib's backend {plt.get_backend()!r} cannot open a "
                "window (no display?); nothing is shown. Use render_mode='rgb_array' to get frames."
            )
            self._headless = True
            return False
        return True

    def _show(self, frame: np.ndarray) -> None:
        import matplotlib.pyplot as plt

        if self._window is None or not plt.fignum_exists(self._window[0].number):
            fig, ax = plt.subplots(figsize=(FRAME_SHAPE[1] / 100, FRAME_SHAPE[0] / 100), dpi=100)
            ax.set_axis_off()
            fig.subplots_adjust(0, 0, 1, 1)
            self._window = (fig, ax.imshow(frame))
            plt.show(block=False)
        else:
            self._window[1].set_data(frame)
        plt.pause(1.0 / self.fps)

    def close(self) -> None:
        """Close the window, if one is open."""
        if self._window is not None:
            import matplotlib.pyplot as plt

            plt.close(self._window[0])
            self._window = None
