"""Whether every legend entry of a figure shows in its axes: the colours to look for, the
regions to look in, and the count, on pixels (shared by test_report and test_browser).

A legend entry drawn as a line (a variant, a split of a path) must have its colour on at least
:data:`MIN_PIXELS` pixels inside the axes. The colour is matched within :data:`TOLERANCE` per
channel: antialiasing blends only a line's edges; a line 1.5 pt wide (2 px at 100 dpi) has
pixels of its exact colour along its middle. Grey and black entries (the split styles, the
choices of λ) share the frame's colour and are not looked for; nor are entries drawn as markers
only (a cross for a variant whose every member diverged, the edge marker of a far reference).
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgb

TOLERANCE = 6          # per channel, of 255: blends at a line's edge are farther than this
MIN_PIXELS = 30        # a few millimetres of line: one marker or a short stretch is enough
_INSET = 3             # pixels inside the axes' frame (the spines and ticks are not data)
_GREY = 0.1            # max − min channel below this (of 1): black, grey, not a series colour


def legend_probes(figure) -> tuple[list[tuple[str, tuple[int, int, int]]],
                                   list[tuple[int, int, int, int]]]:
    """The (label, RGB colour) of each legend entry to look for, and the axes' boxes in image
    pixels (x0, y0, x1, y1; origin top-left, as a browser's canvas reads them)."""
    width, height = (round(v) for v in figure.get_size_inches() * figure.dpi)
    boxes = []
    for ax in figure.axes:
        box = ax.get_position()
        boxes.append((round(box.x0 * width) + _INSET, round((1 - box.y1) * height) + _INSET,
                      round(box.x1 * width) - _INSET, round((1 - box.y0) * height) - _INSET))
    probes = []
    for legend in figure.legends + [ax.get_legend() for ax in figure.axes if ax.get_legend()]:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            if str(handle.get_linestyle()).lower() in ("none", ""):
                continue
            rgb = to_rgb(handle.get_color())
            if max(rgb) - min(rgb) < _GREY:
                continue
            probes.append((text.get_text(), tuple(round(255 * c) for c in rgb)))
    return probes, boxes


def count_pixels(image: np.ndarray, colours: list[tuple[int, int, int]],
                 boxes: list[tuple[int, int, int, int]]) -> list[int]:
    """How many pixels of ``image`` (H × W × 3 or 4, uint8) inside ``boxes`` have each colour."""
    counts = [0] * len(colours)
    for x0, y0, x1, y1 in boxes:
        region = image[y0:y1, x0:x1, :3].astype(int)
        for i, colour in enumerate(colours):
            counts[i] += int((np.abs(region - np.array(colour)) <= TOLERANCE).all(-1).sum())
    return counts


def hidden_entries(figure) -> list[str]:
    """The legend entries whose colour shows on fewer than :data:`MIN_PIXELS` pixels of the
    rendered figure's axes."""
    probes, boxes = legend_probes(figure)
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())
    counts = count_pixels(image, [colour for _, colour in probes], boxes)
    return [label for (label, _), n in zip(probes, counts) if n < MIN_PIXELS]
