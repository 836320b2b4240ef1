"""Value-weighted attention: how much of what a head moved came from each token.

Kobayashi et al. (2020), "Attention is Not Only a Weight: Analyzing Transformers with Vector
Norms": head ``h`` of a layer adds ``Σ_j α_ij f_h(x_j)`` to query ``i``'s position, where
``f_h(x_j) = (x_j W_V^h + b_V^h) W_O^h`` is token ``j``'s value vector taken through the head's
slice of the output projection (grouped-query attention: the value of the head's key/value
group, the head's own slice of ``W_O``). ``α_ij ‖f_h(x_j)‖`` is how much of that came from token
``j``: a large weight on a token whose vector is short (an attention sink, a delimiter) moves
little.

Capture keeps ``‖f_h(x_j)‖`` for every captured (layer, head, key position): ``T`` numbers per
head. For the layer-level view ``‖Σ_h α^h_ij f_h(x_j)‖`` it can also keep, per layer and key
position, the Gram matrix of the captured heads' vectors, ``G_j[h, h'] = ⟨f_h(x_j), f_h'(x_j)⟩``
(its upper triangle, ``H (H + 1) / 2`` numbers): ``‖Σ_h a_h f_h(x_j)‖² = aᵀ G_j a`` for any
weights ``a``, exactly, without the vectors or the output projection.

Pure numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

WEIGHTINGS = ("attention", "norm")
"""``"attention"``: the weights ``α_ij``; ``"norm"``: ``α_ij ‖f_h(x_j)‖`` (Kobayashi et al. 2020)."""


def check_weighting(weighting: object) -> str:
    """``weighting`` when it is one of :data:`WEIGHTINGS`; ``ValueError`` naming them otherwise."""
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be 'attention' (the attention weights) or 'norm' (each weight "
                         f"times the norm of what the attended token contributes); got {weighting!r}")
    return weighting


def describe_weighting(weighting: str) -> str:
    """A few words saying what ``weighting`` is, for summaries."""
    return ("attention weights α" if weighting == "attention"
            else "value-weighted: α·‖f(x)‖ (Kobayashi et al. 2020), rows renormalised")


@lru_cache(maxsize=16)
def head_pairs(n_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the upper triangle of an ``n_heads`` × ``n_heads`` matrix, in the
    order a Gram is stored (``numpy.triu_indices``)."""
    return np.triu_indices(n_heads)


@dataclasses.dataclass(frozen=True)
class ValueNorms:
    """What one attention block's values contribute, per captured layer, head and key position.

    norms : float32 (n_layers, n_heads, n_keys), ``‖f_h(x_j)‖``.
    gram : float32 (n_layers, n_keys, n_heads · (n_heads + 1) / 2) or None: the upper triangle
        (:func:`head_pairs` order) of ``⟨f_h(x_j), f_h'(x_j)⟩`` over the captured heads, for the
        layer-level view (see :meth:`layer_rows`).
    """

    norms: np.ndarray
    gram: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.norms.nbytes + (0 if self.gram is None else self.gram.nbytes)

    def select(self, li: Sequence[int], hi: Sequence[int]) -> ValueNorms:
        """These norms for layer positions ``li`` and head positions ``hi``."""
        li, hi = np.asarray(li, np.intp), np.asarray(hi, np.intp)
        gram = None
        if self.gram is not None:
            rows, cols = head_pairs(self.norms.shape[1])
            where = {(int(a), int(b)): p for p, (a, b) in enumerate(zip(rows, cols))}
            new_rows, new_cols = head_pairs(len(hi))
            picked = [where[tuple(sorted((int(hi[a]), int(hi[b]))))] for a, b in zip(new_rows, new_cols)]
            gram = self.gram[li][:, :, picked]
        return ValueNorms(self.norms[np.ix_(li, hi)], gram)

    def layer_rows(self, li: int, alphas: np.ndarray, k0: int = 0) -> np.ndarray:
        """float32 (n_rows, n_cols): ``‖Σ_h α^h_ij f_h(x_j)‖`` over the captured heads of layer
        position ``li``, from ``alphas`` (n_heads, n_rows, n_cols), the heads' weights of some
        query rows over keys ``k0 .. k0 + n_cols``."""
        if self.gram is None:
            raise ValueError("this block keeps the norms of each head's values but not what the "
                             "layer-level view needs; capture with values='layer'")
        rows, cols = head_pairs(alphas.shape[0])
        gram = self.gram[li, k0:k0 + alphas.shape[2]]
        out = np.zeros(alphas.shape[1:], np.float32)
        for p, (a, b) in enumerate(zip(rows, cols)):
            out += (alphas[a] * alphas[b]) * (gram[:, p] * (1 if a == b else 2))[None, :]
        np.maximum(out, 0, out=out)  # rounding can take a zero just below 0
        return np.sqrt(out, out=out)
