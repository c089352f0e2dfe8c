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

from .recording import behavior_at


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


def eye_centred(frames, x, y):
    """Frames (F, H, W) each shifted by (-x[f], -y[f]) pixels (bilinear; outside the screen the
    frame's mean grey), i.e. as seen from an eye looking at (x, y) pixels off the screen's centre
    line. Same dtype as `frames`."""
    out = np.empty_like(frames)
    for f, (frame, dx, dy) in enumerate(zip(frames, x, y)):
        shift = np.float32([[1, 0, -dx], [0, 1, -dy]])
        grey = float(frame.mean())
        out[f] = cv2.warpAffine(frame, shift, frame.shape[::-1], flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=grey)
    return out
