"""The patch grid: where in the frame an image's structure sits, compact enough to store with every item.

Where it sits in the flow::

    model.forward (patch tokens pooled to GRID_CELLS² cells) ──► embed (quantise) ──► bank ──► dedup, campaigns

A copy decision that rests on embeddings alone (cls cosine) must agree *spatially* too: global cosine ignores
where things are in the frame, and a forensic model's CLS is meant to put different pictures of one kind
close together. So per image the model's patch tokens are average-pooled to a coarse grid, centred on
their mean over the cells (what is left is where the picture differs from its own average: the global
look that made the CLS vectors close is removed), projected to a narrow width and stored as int8
(``GRID_CELLS² × GRID_WIDTH`` bytes + a 2-byte header ≈ 1.2 KB).

:func:`agreement` is the cosine between two such grids over all cells at once, the best over the 8
rotations/mirrors of one grid (the other signals match turned and mirrored copies too; the preprocessing's
centre crop of a turned image is the turned centre crop). Copies agree because the same content sits in the
same cells; distinct pictures that only share a global look do not. Pure numpy: never imports torch.

How close two grids must agree depends on how much they can say (:func:`required_agreement`). A grid that
agrees with itself moved by one cell (:func:`smoothness`: a glow, a gradient, a star field's brightness map)
has few independent cells, and distinct pictures of that kind agree by chance: generated star fields with a
glow reached 0.97 with each other, gradients 0.91. So the bar rises from the base threshold towards 1 with
the smoother of the two grids: a copy must agree better than the grid agrees with itself misaligned. Used by
dedup's embedding-only copies, and by campaign edges between items that no PDQ or local-feature edge links;
a campaign edge that attaches an item to a group of verified copies keeps the base threshold (photos' grids
are smooth too, median 0.64, and the rising bar on every campaign edge cut the campaign benchmark's F1 from
0.987 to 0.917).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cells per side. The ViT-S/16 at 384 px has 24 × 24 patches: 6 × 6 cells of 4 × 4 patches each. A 80 %-area
# crop moves content by ≈ 6 % of the side (a third of a cell), so crops still agree; finer grids lose them.
GRID_CELLS = 6
# Width after the fixed random projection of the tokens (Johnson–Lindenstrauss: cosines over the 36 × 32
# values keep within a few hundredths of the full width's). 36 × 32 = 1,152 bytes per item.
GRID_WIDTH = 32
GRID_PROJECTION_SEED = 0
_HEADER = 2  # cells, width (one byte each)


@dataclass(frozen=True)
class PatchGrid:
    """[cells, cells, width] int8 values of one image's centred, projected patch-token grid."""

    values: np.ndarray

    @classmethod
    def quantise(cls, grid: np.ndarray) -> PatchGrid:
        """int8 of a float grid [cells, cells, width] (already centred); only its direction matters."""
        grid = np.asarray(grid, np.float32)
        peak = float(np.abs(grid).max()) if grid.size else 0.0
        q = np.zeros(grid.shape, np.int8) if peak == 0 else np.round(grid * (127.0 / peak)).astype(np.int8)
        return cls(q)

    def to_bytes(self) -> bytes:
        cells, _, width = self.values.shape
        return bytes((cells, width)) + self.values.astype(np.int8).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> PatchGrid | None:
        """None for a null (an item banked before grids were stored)."""
        if not data:
            return None
        cells, width = data[0], data[1]
        if len(data) != _HEADER + cells * cells * width:
            raise ValueError(f"a packed patch grid of {cells}×{cells}×{width} needs "
                             f"{_HEADER + cells * cells * width} bytes, got {len(data)}")
        return cls(np.frombuffer(data, np.int8, offset=_HEADER).reshape(cells, cells, width))


def dihedral(values: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/mirrors of a [cells, cells, …] grid (the identity first)."""
    out = []
    for flip in (values, values[:, ::-1]):
        for k in range(4):
            out.append(np.rot90(flip, k, axes=(0, 1)))
    return out


def agreements(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`agreement` of many pairs at once: a, b [m, cells, cells, width] (any numeric type) → [m] float32."""
    a = np.asarray(a, np.float32).reshape(len(a), -1)
    na = np.linalg.norm(a, axis=1)
    b = np.asarray(b, np.float32)
    nb = np.linalg.norm(b.reshape(len(b), -1), axis=1)
    best = np.full(len(a), -np.inf, np.float32)
    for v in dihedral(np.moveaxis(b, 0, 2)):  # turn each b's cells, keeping pairs and width apart
        best = np.maximum(best, np.einsum("ij,ij->i", a, np.moveaxis(v, 2, 0).reshape(len(b), -1)))
    denom = na * nb
    return np.where(denom > 0, best / np.where(denom > 0, denom, 1), 0).astype(np.float32)


# One-cell moves whose overlap `smoothness` compares (their opposites give the same cosines).
_ONE_CELL_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def smoothnesses(values: np.ndarray) -> np.ndarray:
    """Per grid of values [m, cells, cells, width]: the largest cosine between the grid and itself moved by
    one cell (right, down or diagonally; over the cells both cover), clipped to [0, 1] → [m] float32."""
    g = np.asarray(values, np.float32)
    n = g.shape[1]
    best = np.zeros(len(g), np.float32)
    for dy, dx in _ONE_CELL_SHIFTS:
        a = g[:, dy:, max(dx, 0):n + min(dx, 0)].reshape(len(g), -1)
        b = g[:, :n - dy, max(-dx, 0):n + min(-dx, 0)].reshape(len(g), -1)
        denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.einsum("ij,ij->i", a, b) / np.where(denom > 0, denom, 1)
        best = np.maximum(best, np.where(denom > 0, cos, 0))
    return np.clip(best, 0, 1).astype(np.float32)


def smoothness(grid: PatchGrid) -> float:
    """`smoothnesses` of one grid."""
    return float(smoothnesses(grid.values[None])[0])


def required_agreement(min_agreement: float, smooth_a, smooth_b):
    """The agreement two grids need to verify a copy: `min_agreement` for grids with no self-similarity,
    rising linearly to 1 with the smoother of the two (works on floats and on arrays). A `min_agreement` of
    -1 (every cosine) turns the check off whatever the grids."""
    if min_agreement <= -1:
        return min_agreement
    s = np.maximum(smooth_a, smooth_b)
    return min_agreement + (1.0 - min_agreement) * s


def verified(a: PatchGrid | None, b: PatchGrid | None, min_agreement: float) -> tuple[float | None, bool]:
    """(agreement of a and b, whether it reaches the `required_agreement` of this pair); (None, False) when
    the grids cannot be compared."""
    agree = agreement(a, b)
    if agree is None:
        return None, False
    return agree, bool(agree >= required_agreement(min_agreement, smoothness(a), smoothness(b)))


def agreement(a: PatchGrid | None, b: PatchGrid | None) -> float | None:
    """Cosine between two grids over all cells, the best over b's 8 rotations/mirrors; None when either is
    missing or they differ in shape (grids of another model or version cannot be compared)."""
    if a is None or b is None or a.values.shape != b.values.shape:
        return None
    x = a.values.astype(np.float32).ravel()
    nx = float(np.linalg.norm(x))
    if nx == 0:
        return 0.0
    stack = np.stack([v.reshape(-1) for v in dihedral(b.values)]).astype(np.float32)
    norms = np.linalg.norm(stack, axis=1)
    if norms[0] == 0:
        return 0.0
    return float((stack @ x).max() / (nx * norms[0]))
