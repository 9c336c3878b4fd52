"""The similarity map's diffusion map on synthetic embeddings (webui/core/diffusion_map.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import sparse

from webui.core.diffusion_map import clusters, diffusion_map, knn_kernel


def blobs(n_each: int, dim: int = 32, seed: int = 0, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    other = rng.normal(size=dim)
    a = centre + spread * rng.normal(size=(n_each, dim))
    b = other + spread * rng.normal(size=(n_each, dim))
    return np.vstack([a, b])


@pytest.mark.parametrize(
    "n_each, dim", [(40, 32), (400, 32), (100, 200)]
)  # the dense solver, ARPACK (eigsh), long vectors (searched on 64 principal axes)
def test_two_blobs_separate_on_the_first_coordinate(n_each, dim) -> None:
    x = blobs(n_each, dim)
    result = diffusion_map(x, k=8)
    first = result.coords[:, 0]
    a, b = first[:n_each], first[n_each:]
    assert a.max() < b.min() or b.max() < a.min()  # a threshold splits them exactly
    assert result.eigenvalues[0] == pytest.approx(1.0, abs=1e-6)  # two pieces: lambda 1
    labels = clusters(result.coords[:, :2], 2)
    assert len(set(labels[:n_each])) == 1 and len(set(labels[n_each:])) == 1
    assert labels[0] != labels[-1]


def test_three_touching_groups_and_the_map_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    centres = np.eye(3, 16) * 2.0
    x = np.vstack([c + 0.4 * rng.normal(size=(60, 16)) for c in centres])
    one, two = diffusion_map(x), diffusion_map(x)
    np.testing.assert_allclose(one.coords, two.coords)
    labels = clusters(one.coords[:, :2], 3)
    for g in range(3):  # each group is (almost all) one cluster
        counts = np.bincount(labels[60 * g : 60 * (g + 1)], minlength=3)
        assert counts.max() >= 55, counts


def test_the_knn_kernel_of_10000_points_is_sparse_and_small() -> None:
    x = np.random.default_rng(1).normal(size=(10_000, 32)).astype(np.float32)
    tracemalloc.start()
    try:
        w = knn_kernel(x, k=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sparse.issparse(w) and w.shape == (10_000, 10_000)
    assert 10 * 10_000 <= w.nnz <= 2 * 10 * 10_000  # k per row, symmetrised
    assert (w != w.T).nnz == 0
    dense_bytes = 10_000 * 10_000 * 4  # what one float32 n x n matrix would take: 400 MB
    assert peak < dense_bytes / 4, peak
    row = w.getrow(0).toarray().ravel()
    assert row[0] == 0.0 and np.all(row <= 1.0)  # no self loop; Gaussian weights


def test_duplicates_and_a_far_outlier_get_finite_places() -> None:
    """Saved-twice images embed identically; an odd one out is far from everything."""
    red, blue = np.eye(1, 8, 0), np.eye(1, 8, 1)
    outlier = -np.ones((1, 8))
    x = np.vstack([red, red, red, blue, blue, blue, outlier])
    result = diffusion_map(x, k=3)
    assert np.isfinite(result.coords).all()
    labels = clusters(result.coords[:, :2], 2)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:6])) == 1


def test_too_few_points_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        diffusion_map(np.ones((2, 4)))
