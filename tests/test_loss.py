"""The BYOL loss against a numpy computation of 2 - 2 cos, summed over both directions."""

from __future__ import annotations

import numpy as np
import paddle

from byol_lib.loss import byol_loss, normalized_mse


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_normalized_mse_is_two_minus_two_cosine() -> None:
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(16, 32)), rng.normal(size=(16, 32)) * 5.0
    got = normalized_mse(paddle.to_tensor(p, dtype="float64"), paddle.to_tensor(z, dtype="float64")).numpy()
    np.testing.assert_allclose(got, 2 - 2 * _cos(p, z), rtol=1e-10)


def test_byol_loss_sums_directions_and_averages_batch() -> None:
    rng = np.random.default_rng(1)
    p1, p2, z1, z2 = (rng.normal(size=(8, 16)) for _ in range(4))
    expected = np.mean((2 - 2 * _cos(p1, z2)) + (2 - 2 * _cos(p2, z1)))
    t = [paddle.to_tensor(a, dtype="float64") for a in (p1, p2, z1, z2)]
    assert np.isclose(float(byol_loss(*t)), expected, rtol=1e-10)
    swapped = float(byol_loss(t[1], t[0], t[3], t[2]))  # exchange the roles of the two views
    assert np.isclose(swapped, expected, rtol=1e-12)


def test_byol_loss_range_is_zero_to_eight() -> None:
    z = paddle.to_tensor(np.random.default_rng(2).normal(size=(4, 8)), dtype="float64")
    assert float(byol_loss(z * 3, z * 0.5, z, z)) < 1e-12  # predictions aligned with targets
    assert np.isclose(float(byol_loss(-z, -z, z, z)), 8.0)  # anti-aligned in both directions
    rand = [paddle.randn([64, 8], dtype="float64") for _ in range(4)]
    assert 0.0 <= float(byol_loss(*rand)) <= 8.0


def test_byol_loss_runs_in_float32_for_low_precision_heads() -> None:
    """Mixed precision: bfloat16 / float16 head outputs are cast up before the loss, which equals the float64 loss of
    the same (rounded) values to float32 precision."""
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((6, 5)) * 300.0 for _ in range(4)]  # squares beyond float16's range
    for dtype in ("bfloat16", "float16"):
        low = [paddle.to_tensor(x, dtype="float32").astype(dtype) for x in parts]
        rounded = [t.astype("float32").numpy().astype(np.float64) for t in low]
        loss = byol_loss(*low)
        assert loss.dtype == paddle.float32
        expected = np.mean((2 - 2 * _cos(rounded[0], rounded[3])) + (2 - 2 * _cos(rounded[1], rounded[2])))
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
