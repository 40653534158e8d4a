"""Image grids as pixel-exact PNG figures (matplotlib), with titles and labels.

`save_image_grid` writes an `[R, C, H, W, 3]` image grid as a PNG: cell
(i, j) lies where `GridLayout.cell(i, j)` says (integer `zoom`, `PAD`
pixels between cells, margins sized to the labels and title).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os

from matplotlib import figure as mpl_figure
import numpy as np

from mmvaeplus_jax.infra import plotting

PAD = 2  # pixels between cells
DPI = 100
TITLE_TOP = 20  # pixels for the title
LABEL_TOP = 16  # pixels for column labels
MARGIN = 4
LABEL_PT, TITLE_PT = 7, 8  # font sizes
# Upper bounds of the mean glyph width (pixels) of the default sans font.
LABEL_CHAR_PX, TITLE_CHAR_PX = 6, 7


@dataclasses.dataclass(frozen=True)
class GridLayout:
  """Pixel geometry of a grid PNG written by `save_image_grid`.

  Cell (i, j) occupies rows `top + PAD + i (cell_h + PAD)` and columns
  `left + PAD + j (cell_w + PAD)` (cell_h x cell_w pixels) of a
  `height x width` image; the padding is white.
  """

  rows: int
  cols: int
  cell_h: int
  cell_w: int
  left: int
  top: int
  width: int
  height: int

  def cell(self, i: int, j: int) -> tuple[slice, slice]:
    y = self.top + PAD + i * (self.cell_h + PAD)
    x = self.left + PAD + j * (self.cell_w + PAD)
    return slice(y, y + self.cell_h), slice(x, x + self.cell_w)


def grid_layout(rows: int, cols: int, event_hw: tuple[int, int], *,
                zoom: int = 2, title: str = '',
                row_labels: Sequence[str] = (),
                col_labels: Sequence[str] = ()) -> GridLayout:
  """The layout `save_image_grid` uses: the left margin fits the longest row
  label, the width fits the title."""
  ch, cw = event_hw[0] * zoom, event_hw[1] * zoom
  left = MARGIN + (
      LABEL_CHAR_PX * max(len(str(r)) for r in row_labels) + 4
      if row_labels else 0)
  top = MARGIN + (TITLE_TOP if title else 0) + (LABEL_TOP if col_labels
                                                 else 0)
  body_h = rows * (ch + PAD) + PAD
  body_w = cols * (cw + PAD) + PAD
  width = max(left + body_w, TITLE_CHAR_PX * len(title)) + MARGIN
  return GridLayout(rows, cols, ch, cw, left, top, width,
                    top + body_h + MARGIN)


def save_image_grid(path: str, images, *, title: str = '',
                    row_labels: Sequence[str] = (),
                    col_labels: Sequence[str] = (),
                    zoom: int = 2) -> GridLayout:
  """Writes images `[R, C, H, W, 3]` (float, clamped to [0, 1]) as a PNG.

  The grid is placed pixel for pixel (`figimage`, integer `zoom`), labels
  and title as text in margins sized by `grid_layout`; see `GridLayout` for
  where each cell lies. Returns the layout.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 5 or images.shape[-1] != 3:
    raise ValueError(f'images must be [R, C, H, W, 3], got {images.shape}')
  r, c, h, w, _ = images.shape
  for name, labels, n in (('row_labels', row_labels, r),
                          ('col_labels', col_labels, c)):
    if labels and len(labels) != n:
      raise ValueError(f'{name} has {len(labels)} entries for {n}')
  zoom = int(zoom)
  if zoom > 1:
    images = images.repeat(zoom, axis=2).repeat(zoom, axis=3)
  body = plotting.grid(images, pad=PAD)
  lay = grid_layout(r, c, (h, w), zoom=zoom, title=title,
                    row_labels=row_labels, col_labels=col_labels)
  # +0.5 px: the canvas is int(size * dpi) pixels, never one short.
  fig = mpl_figure.Figure(figsize=((lay.width + 0.5) / DPI,
                                   (lay.height + 0.5) / DPI), dpi=DPI)
  fig.figimage(body, xo=lay.left, yo=MARGIN, origin='upper')
  if title:
    fig.text(MARGIN / lay.width, 1 - MARGIN / lay.height, title,
             ha='left', va='top', fontsize=TITLE_PT)
  for i, label in enumerate(row_labels):
    rows, _ = lay.cell(i, 0)
    y = (rows.start + rows.stop) / 2
    fig.text((lay.left - 2) / lay.width, 1 - y / lay.height, str(label),
             ha='right', va='center', fontsize=LABEL_PT)
  for j, label in enumerate(col_labels):
    _, cols = lay.cell(0, j)
    x = (cols.start + cols.stop) / 2
    fig.text(x / lay.width, 1 - (lay.top - 2) / lay.height, str(label),
             ha='center', va='bottom', fontsize=LABEL_PT)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, facecolor='white')
  return lay
