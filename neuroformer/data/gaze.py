"""Movie frames in eye-centred coordinates.

A receptive field sits at a fixed place on the retina, so on the screen it moves with the eye.
Shifting each frame by minus the gaze puts the pixels a field sees back in one place whatever
the eye does, which lets a filter fitted on some movies carry over to others. The gaze is two
behaviour variables (horizontal x, vertical y) and a scale in pixels per unit of them (pixels
per degree of visual angle, from the screen's geometry).
"""
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from .recording import behavior_at, behavior_values, resolve_variable

GREY = 127.5            # what an eye-centred frame shows beyond the screen's edge: the blank grey screen
MAX_SHIFT = 0.5         # largest gaze shift allowed, as a fraction of the frame's height and width


@dataclass(frozen=True)
class Gaze:
    x: str = ""                   # behaviour variable of the horizontal gaze ("" = none)
    y: str = ""                   # vertical gaze ("" = none)
    pixels_per_unit: float = 1.0  # frame pixels per unit of the gaze variables

    def __bool__(self):
        return bool(self.x or self.y)

    def variables(self):
        return [v for v in (self.x, self.y) if v]

    def pixels(self, data, times):
        """(x, y) gaze in pixels (two float arrays) at each time: the variables' latest samples."""
        def at(name):
            return behavior_at(data, name, times) * self.pixels_per_unit if name else np.zeros(len(times))
        return at(self.x), at(self.y)

    def check(self, data, frame_size, source, targets=()):
        """InputError unless the gaze variables are 1-D inputs (not decoded targets: the shifted
        frames would show them) whose shifts stay within MAX_SHIFT of the frame `frame_size` (H, W)."""
        for axis, name, size in (("x", self.x, frame_size[1]), ("y", self.y, frame_size[0])):
            if not name:
                continue
            try:
                name = resolve_variable(data, name)
            except KeyError as err:
                raise InputError(source, (f"window.gaze.{axis}", err.args[0])) from None
            if name in {resolve_variable(data, t) for t in targets}:
                raise InputError(source, (f"window.gaze.{axis}", f"{name} is a decoded target: shifting the "
                                                                  "frames by it would show the answer"))
            values = behavior_values(data, name)
            if values.ndim != 1:
                raise InputError(source, (f"window.gaze.{axis}", f"{name} must hold one value per sample"))
            largest = float(np.nanmax(np.abs(values))) * self.pixels_per_unit if len(values) else 0.0
            if not largest < MAX_SHIFT * size:
                raise InputError(source, ("window.gaze.pixels_per_unit",
                                          f"{name} up to {largest:.4g} pixels off a {size}-pixel frame: check the "
                                          f"scale (at most {MAX_SHIFT:g} of the frame)"))


def eye_centred(frames, x, y):
    """Frames (F, H, W) each shifted by (-x[f], -y[f]) pixels (bilinear; beyond the screen's edge
    the blank grey), i.e. as seen from an eye looking at (x, y) pixels off the screen's centre:
    a gaze to the right (x > 0) moves the picture left, one towards higher rows (y > 0) moves it
    towards lower ones. Same dtype as `frames`."""
    out = np.empty_like(frames)
    for f, (frame, dx, dy) in enumerate(zip(frames, x, y)):
        shift = np.float32([[1, 0, -dx], [0, 1, -dy]])
        out[f] = cv2.warpAffine(frame, shift, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=GREY)
    return out
