"""The shared homes: selection parsing, the packed-triangle geometry, narrowing a trace."""

from __future__ import annotations

import numpy as np
import pytest

from attn_widget import geometry, selection
from attn_widget.trace import AttentionTrace


def test_ranges_print_runs_compactly_and_lists_otherwise():
    assert selection.format_ranges([0, 1, 2, 3]) == "0..3"
    assert selection.format_ranges([5]) == "5"
    assert selection.format_ranges([1, 4, 7]) == "1,4,7"


def test_head_lists_group_by_layer_and_join_runs():
    pairs = [(3, 0), (0, 4), (0, 1), (0, 5), (3, 1), (0, 6)]
    assert selection.format_head_list(pairs) == "L0 H1, H4–H6; L3 H0–H1"


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_booleans_floats_and_strings_are_not_indices(value):
    assert not selection.is_int(value)
    with pytest.raises(TypeError, match="position must be an integer"):
        selection.check_index(value, 4, "position")


def test_check_index_counts_negative_positions_from_the_end_and_names_the_range():
    assert selection.check_index(np.int64(-1), 4, "position") == 3
    with pytest.raises(IndexError, match=r"position 4 is out of range: allowed 0\.\.3"):
        selection.check_index(4, 4, "position")


def test_counts_name_the_bound_and_why():
    assert selection.check_count(np.int32(3), "n", minimum=2) == 3
    with pytest.raises(ValueError, match=r"n must be an integer ≥ 2 \(one copy\); got 1"):
        selection.check_count(1, "n", minimum=2, hint="one copy")
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer; got -1"):
        selection.check_count(-1, "max_new_tokens")


def test_model_indices_keep_the_order_given_and_count_negatives_from_the_model():
    assert selection.model_indices(None, (2, 3), 30, "layers") == (2, 3)
    assert selection.model_indices([-1, 2], (2, 29), 30, "layers") == (29, 2)
    with pytest.raises(ValueError, match=r"layers is empty; pass None for every captured one \(2\.\.3\)"):
        selection.model_indices([], (2, 3), 30, "layers")
    for bad in (True, 2.0, [1, True]):
        with pytest.raises(TypeError, match=r"layers must be integers \(model indices\); got (True|2\.0)"):
            selection.model_indices(bad, (2, 3), 30, "layers")


def test_indices_to_capture_are_range_checked_sorted_and_distinct():
    assert selection.indices_below([3, -1, 0, 3], 4, "heads", "self") == [0, 3]
    with pytest.raises(ValueError, match=r"heads must be integers in 0\.\.3 .* self attention; got 4"):
        selection.indices_below([4], 4, "heads", "self")


def test_position_in_names_what_was_captured():
    assert selection.position_in((2, 5, 7), 5, "layer", "self") == 1
    with pytest.raises(IndexError, match=r"layer 3 was not captured in block 'self'; captured layers: 2,5,7"):
        selection.position_in((2, 5, 7), 3, "layer", "self")


def test_packed_triangle_round_trips_and_rows_are_contiguous():
    rng = np.random.default_rng(0)
    a = np.tril(rng.random((2, 5, 5))).astype(np.float32)
    packed = geometry.pack_causal(a)
    assert packed.shape == (2, 15) and geometry.n_from_packed(15) == 5
    np.testing.assert_array_equal(geometry.unpack_causal(packed, 5), a.astype(np.float16).astype(np.float32))
    row3 = packed[:, geometry.tril_offset(3):geometry.tril_offset(4)]
    np.testing.assert_array_equal(row3, a[:, 3, :4].astype(np.float16))
    dense = geometry.unpack_causal(packed, 5)
    np.testing.assert_array_equal(geometry.packed_rows(packed, 2, 4, 5), dense[:, 2:4])
    with pytest.raises(ValueError, match="14 values are not a packed lower triangle"):
        geometry.n_from_packed(14)


def test_geometry_indexes_a_cell_in_packed_and_dense_stores():
    causal = geometry.geometry(True, 4, 4)
    idx, ok = causal.flat_index(np.array([3, 1]), np.array([2, 2]))
    assert idx.tolist() == [8, 0] and ok.tolist() == [True, False]  # (1, 2) is above the diagonal
    dense = geometry.geometry(False, 3, 5)
    idx, ok = dense.flat_index(2, 4)
    assert int(idx) == 14 and bool(ok)
    assert causal.seeing_queries.tolist() == [4, 3, 2, 1]


def _trace(n_layers=3, n_heads=4, t=6) -> AttentionTrace:
    rng = np.random.default_rng(1)
    a = np.tril(rng.random((n_layers, n_heads, t, t))) + 1e-3 * np.tril(np.ones((t, t)))
    a /= a.sum(-1, keepdims=True)
    return AttentionTrace.from_dense(a, [f"t{i}" for i in range(t)], prompt_len=4)


def test_narrowing_keeps_the_chosen_layers_and_heads_with_their_values():
    trace = _trace()
    small = trace.narrow(layers=[2, 0], heads=[-1])
    assert small.layers == (2, 0) and small.heads == (3,)
    np.testing.assert_array_equal(small.head(2, 3), trace.head(2, 3))
    assert small.spans == trace.spans and small.tokens is trace.tokens


def test_narrowing_to_nothing_new_returns_the_same_trace_and_bad_picks_are_named():
    trace = _trace()
    assert trace.narrow() is trace
    with pytest.raises(IndexError, match="head 9 was not captured"):
        trace.narrow(heads=[9])
    with pytest.raises(KeyError, match=r"block must be one of \['self'\]"):
        trace.narrow(block="cross")
