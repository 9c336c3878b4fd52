"""The image browser's map: a diffusion map of image embeddings, and clusters on it.

Pairwise distances -> Gaussian kernel -> normalised diffusion operator -> leading
eigenvectors (Coifman and Lafon's diffusion maps, density-normalised with alpha = 1):

1. `knn_kernel`: each point's k nearest neighbours by Euclidean distance between
   L2-normalised embeddings (on their 64 principal components), found in row blocks (never an n x n matrix in memory), a
   Gaussian weight exp(-d^2 / eps) with eps the median squared neighbour distance,
   symmetrised: a scipy.sparse matrix with at most 2 n k entries;
2. `diffusion_map`: the density normalisation W / (q q^T), the symmetric form of the
   Markov matrix D^-1/2 W D^-1/2, its leading eigenvectors (scipy.sparse.linalg.eigsh,
   the trivial one deflated, so a graph in several pieces still maps piece by piece);
   coordinates psi_i * lambda_i;
3. `clusters`: k-means (scipy.cluster.vq.kmeans2, fixed seed) on the leading
   coordinates.

This module must never import torch or a UI library (numpy and scipy only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.cluster.vq import kmeans2
from scipy.sparse.linalg import LinearOperator, eigsh

BLOCK_BYTES = 8 * 2**20  # one block of distances at a time
DENSE_BELOW = 300
PCA_DIMS = 64  # the neighbour search runs on this many principal components
MIN_WEIGHT = 1e-10  # every kNN edge keeps a weight: no point without neighbours  # fewer points: a dense eigensolver (ARPACK is shaky on tiny problems)


@dataclass(frozen=True)
class DiffusionMap:
    coords: np.ndarray  # n x dims diffusion coordinates (first two: the map's x, y)
    eigenvalues: np.ndarray  # of the non-trivial eigenvectors used
    kernel_nnz: int  # entries of the sparse kernel (at most 2 n k)


def knn_kernel(x: np.ndarray, k: int = 10) -> sparse.csr_matrix:
    """The symmetric Gaussian kNN kernel of the rows of `x` (L2-normalised first)."""
    x = _reduced(_normalised(x))
    n = len(x)
    k = max(1, min(k, n - 1))
    norms = (x * x).sum(1)
    block = max(1, BLOCK_BYTES // (4 * max(n, 1)))
    rows, cols, dists = [], [], []
    for start in range(0, n, block):
        part = x[start : start + block]
        d2 = part @ x.T  # in place from here: one block-sized array (plus argpartition's)
        d2 *= -2.0
        d2 += norms[start : start + block, None]
        d2 += norms[None, :]
        np.maximum(d2, 0.0, out=d2)
        own = np.arange(len(part))
        d2[own, start + own] = np.inf  # a point is not its own neighbour
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        rows.append(np.repeat(start + own, k))
        cols.append(nearest.ravel())
        dists.append(np.take_along_axis(d2, nearest, axis=1).ravel())
    r, c, d2 = np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)
    positive = d2[d2 > 0]
    eps = float(np.median(positive)) if len(positive) else 1.0  # duplicates have distance 0
    weights = np.maximum(np.exp(-d2 / eps), MIN_WEIGHT)  # a far outlier keeps its edges
    w = sparse.csr_matrix((weights, (r, c)), shape=(n, n))
    return w.maximum(w.T).tocsr()


def diffusion_map(x: np.ndarray, k: int = 10, dims: int = 4) -> DiffusionMap:
    """Diffusion coordinates of the rows of `x` (n >= 3); see the module docstring."""
    n = len(x)
    if n < 3:
        raise ValueError("a map needs at least 3 images")
    w = knn_kernel(x, k)
    q = np.asarray(w.sum(1)).ravel()
    inv_q = sparse.diags(1.0 / q)
    w = (inv_q @ w @ inv_q).tocsr()  # alpha = 1: the sampling density divided out
    d = np.asarray(w.sum(1)).ravel()
    half = sparse.diags(1.0 / np.sqrt(d))
    s = (half @ w @ half).tocsr()  # symmetric, same eigenvalues as the Markov matrix
    top = np.sqrt(d / d.sum())  # its eigenvector for eigenvalue 1 (the trivial one)
    dims = max(1, min(dims, n - 2))
    values, vectors = _leading(s, top, dims)
    psi = vectors / np.sqrt(d)[:, None]  # right eigenvectors of the Markov matrix
    psi /= np.linalg.norm(psi, axis=0, keepdims=True) / math.sqrt(n)
    signs = np.sign(psi[np.abs(psi).argmax(0), np.arange(psi.shape[1])])
    coords = psi * signs * values
    return DiffusionMap(coords, values, int(w.nnz))


def _leading(s: sparse.csr_matrix, top: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """The `dims` largest eigenpairs of `s` with `top` deflated, largest first."""
    n = s.shape[0]
    if n < DENSE_BELOW:
        dense = s.toarray() - np.outer(top, top)
        values, vectors = np.linalg.eigh(dense)
    else:
        op = LinearOperator((n, n), dtype=np.float64,
                            matvec=lambda v: s @ v - top * (top @ v))  # fmt: skip
        start = np.random.default_rng(0).standard_normal(n)
        values, vectors = eigsh(op, k=dims, which="LA", v0=start, tol=1e-6)
    order = np.argsort(values)[::-1][:dims]
    return values[order], vectors[:, order]


def clusters(coords: np.ndarray, count: int | None = None, seed: int = 0) -> np.ndarray:
    """A cluster number per point: k-means on the diffusion coordinates. `count` None:
    about sqrt(n / 2), between 2 and 12."""
    n = len(coords)
    if count is None:
        count = int(min(12, max(2, round(math.sqrt(n / 2)))))
    count = max(1, min(count, n))
    _, labels = kmeans2(coords.astype(np.float64), count, minit="++", seed=seed)
    return labels


def _reduced(x: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """`x` on its `dims` principal axes when it has more columns (CLIP: 768-1280): the
    neighbour search gets that many times cheaper, the distances barely change."""
    if x.shape[1] <= dims:
        return x
    centred = x - x.mean(0)
    _, axes = np.linalg.eigh(centred.T @ centred)  # d x d, ascending
    return np.ascontiguousarray(centred @ axes[:, -dims:])


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
