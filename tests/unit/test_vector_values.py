"""aiodq.codec.vectors helpers: full precision for the snapshot phase."""

import numpy as np
import pytest

from aiodq.codec.vectors import full_precision, to_wire_precision


def test_full_precision_is_float32_unless_too_large() -> None:
    """The snapshot phase's full precision is float32; values beyond float32's range go as float64."""
    small = full_precision(np.array([0.1, -2.5, 3e38]))
    assert small.values.dtype == np.float32
    np.testing.assert_array_equal(to_wire_precision([0.1]), np.array([np.float32(0.1)], dtype=np.float64))
    large = full_precision(np.array([0.1, 1e39]))
    assert large.values.dtype == np.float64
    np.testing.assert_array_equal(large.values, [0.1, 1e39])
    with pytest.raises(ValueError):
        full_precision(np.array([0.0, np.nan]))
