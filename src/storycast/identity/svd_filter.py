"""Iterative SVD filter of IdentityStory's identity discovery (paper §3.2; authors' ``utils/svd_filter.py``).

Candidate images of one character are embedded (n x d, PhotoMaker's 2048-d ID embedding); the rows that the
dominant low-rank subspace explains worst are dropped, three times; the identity is the mean of the rest.

Official defaults: ``rank=10``, ``keep_ratio=0.6``, ``iterations=3``, which take 64 candidates to
38, then 22, then 13.

Note on the criterion: the SVD is not mean-centred, so the "dominant subspace" is the one carrying the most
energy. Rows that share a strong common direction (images of one identity) are kept; isolated rows are
dropped. A group of rows with much larger norms than the others would own the top singular vectors and be
kept instead, so embeddings should have comparable norms (CLIP-style embeddings do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RANK = 10
KEEP_RATIO = 0.6
ITERATIONS = 3


@dataclass(frozen=True)
class SVDFilterResult:
    """What the filter kept.

    Attributes:
        indices: Kept row indices into the original ``embeddings`` (int64, ascending).
        embeddings: The kept rows, ``embeddings[indices]``, in the input dtype and device.
        counts: Number of rows before the first and after each iteration, e.g. ``(64, 38, 22, 13)``.
    """

    indices: torch.Tensor
    embeddings: torch.Tensor
    counts: tuple[int, ...]

    @property
    def identity(self) -> torch.Tensor:
        """Mean of the kept rows, shape (d,), computed in float32 (float64 if the input is float64)."""
        return self.embeddings.to(_work_dtype(self.embeddings.dtype)).mean(dim=0)


def kept_counts(num_rows: int, keep_ratio: float = KEEP_RATIO, iterations: int = ITERATIONS) -> tuple[int, ...]:
    """Row counts the filter goes through: ``n, max(int(n * keep_ratio), 1), ...`` (``iterations`` + 1 values)."""
    counts = [num_rows]
    for _ in range(iterations):
        counts.append(max(int(counts[-1] * keep_ratio), 1))
    return tuple(counts)


def reconstruction_errors(embeddings: torch.Tensor, rank: int) -> torch.Tensor:
    """Per-row error of the rank-``rank`` reconstruction, shape (n,).

    Thin SVD ``E = U S V^T`` without mean-centring; ``V_r`` = top-``rank`` right singular vectors;
    ``R = E V_r V_r^T``; error of row j = ``mean_k (E - R)[j, k]^2``.
    """
    work = embeddings.to(_work_dtype(embeddings.dtype))
    _, _, vh = torch.linalg.svd(work, full_matrices=False)
    basis = vh[:rank].T
    residual = work - (work @ basis) @ basis.T
    return residual.pow(2).mean(dim=1)


def svd_filter(
    embeddings: torch.Tensor,
    rank: int = RANK,
    keep_ratio: float = KEEP_RATIO,
    iterations: int = ITERATIONS,
) -> SVDFilterResult:
    """Iteratively keep the rows best explained by the top-``rank`` singular subspace.

    Each iteration computes :func:`reconstruction_errors` on the rows still kept and keeps the
    ``max(int(n * keep_ratio), 1)`` rows with the lowest error (ties: the lower original index first).
    The SVD runs in float32 (float64 for float64 input), as the authors cast fp16 embeddings to float32.

    Args:
        embeddings: (n, d) floating tensor, one ID embedding per candidate image.
        rank: Number of right singular vectors spanning the subspace (official 10); must be smaller than d
            and than the number of rows entering every iteration (otherwise every error is rounding noise).
        keep_ratio: Fraction of rows kept per iteration, in (0, 1) (official 0.6).
        iterations: Number of filtering rounds, >= 1 (official 3).

    Returns:
        An :class:`SVDFilterResult`; ``result.identity`` is the mean of the kept rows.
    """
    _check_embeddings(embeddings)
    _check_settings(rank, keep_ratio, iterations)
    num_rows, dim = embeddings.shape
    if rank >= dim:
        raise ValueError(f"rank={rank} must be smaller than the embedding dimension {dim}.")
    counts = kept_counts(num_rows, keep_ratio, iterations)
    for iteration, rows_in in enumerate(counts[:-1], start=1):
        if rows_in <= rank:
            raise ValueError(
                f"rank={rank} must be smaller than the number of rows entering every iteration, but iteration "
                f"{iteration} of {iterations} gets {rows_in} rows (row counts {list(counts)}). "
                "Use more candidate images, fewer iterations, a larger keep_ratio or a smaller rank."
            )

    indices = torch.arange(num_rows, device=embeddings.device)
    for keep in counts[1:]:
        errors = reconstruction_errors(embeddings[indices], rank)
        order = torch.argsort(errors, stable=True)
        indices = indices[order[:keep]].sort().values
    return SVDFilterResult(indices=indices, embeddings=embeddings[indices], counts=counts)


def identity_from_embeddings(
    embeddings: torch.Tensor,
    rank: int = RANK,
    keep_ratio: float = KEEP_RATIO,
    iterations: int = ITERATIONS,
) -> torch.Tensor:
    """The identity of IdentityStory: mean of the rows kept by :func:`svd_filter`, shape (d,).

    The authors store it as a (1, 1, 1, d) tensor; reshape if you need that layout.
    """
    return svd_filter(embeddings, rank=rank, keep_ratio=keep_ratio, iterations=iterations).identity


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_embeddings(embeddings: torch.Tensor) -> None:
    if not isinstance(embeddings, torch.Tensor):
        raise ValueError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}.")
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D (n_images, dim), got shape {tuple(embeddings.shape)}. "
            "Fix: reshape, e.g. embeddings.reshape(-1, embeddings.shape[-1])."
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a floating-point tensor, got dtype {embeddings.dtype}.")
    if embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"embeddings must have at least one row and one column, got {tuple(embeddings.shape)}.")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values.")


def _check_settings(rank: int, keep_ratio: float, iterations: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}.")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio < 1:
        raise ValueError(f"keep_ratio must be a number strictly between 0 and 1, got {keep_ratio!r}.")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}.")
