import pytest
import torch

from storycast.identity.svd_filter import (
    identity_from_embeddings,
    kept_counts,
    reconstruction_errors,
    svd_filter,
)


def _random(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _naive_filter(embeddings: torch.Tensor, rank: int, keep_ratio: float, iterations: int) -> list[int]:
    """Reference: one row at a time, projections written out as sums over singular vectors."""
    kept = list(range(embeddings.shape[0]))
    for _ in range(iterations):
        current = embeddings[kept].double()
        _, _, vh = torch.linalg.svd(current, full_matrices=False)
        errors = []
        for row in current:
            reconstruction = torch.zeros_like(row)
            for j in range(rank):
                reconstruction += torch.dot(row, vh[j]) * vh[j]
            errors.append(((row - reconstruction) ** 2).mean().item())
        ranked = sorted(range(len(kept)), key=lambda position: (errors[position], kept[position]))
        keep = max(int(len(kept) * keep_ratio), 1)
        kept = sorted(kept[position] for position in ranked[:keep])
    return kept


def _clustered(num_inliers: int, num_outliers: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inliers share a mean direction plus rank-4 variation; outliers point anywhere; all have norm ~sqrt(dim)."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=generator)
    basis = torch.linalg.qr(torch.randn(dim, 4, generator=generator)).Q
    inliers = mean + (torch.randn(num_inliers, 4, generator=generator) * 3.0) @ basis.T
    inliers = inliers + 0.05 * torch.randn(num_inliers, dim, generator=generator)
    outliers = torch.randn(num_outliers, dim, generator=generator)
    outliers = outliers / outliers.norm(dim=1, keepdim=True) * inliers.norm(dim=1).mean()
    rows = torch.cat([inliers, outliers])
    permutation = torch.randperm(rows.shape[0], generator=generator)
    is_outlier = torch.cat([torch.zeros(num_inliers, dtype=torch.bool), torch.ones(num_outliers, dtype=torch.bool)])
    return rows[permutation], is_outlier[permutation]


def test_official_defaults_take_64_rows_to_13():
    result = svd_filter(_random(64, 2048))
    assert result.counts == (64, 38, 22, 13)
    assert kept_counts(64) == (64, 38, 22, 13)
    assert result.indices.shape == (13,)
    assert result.embeddings.shape == (13, 2048)


def test_kept_rows_are_the_original_rows_in_ascending_order():
    embeddings = _random(64, 256, seed=1)
    result = svd_filter(embeddings)
    assert torch.all(result.indices[1:] > result.indices[:-1])
    assert torch.equal(result.embeddings, embeddings[result.indices])


def test_outliers_are_dropped_in_the_first_iteration():
    embeddings, is_outlier = _clustered(num_inliers=50, num_outliers=14, dim=256, seed=3)
    first = svd_filter(embeddings, iterations=1)
    assert not is_outlier[first.indices].any()
    final = svd_filter(embeddings)
    assert final.counts == (64, 38, 22, 13)
    assert not is_outlier[final.indices].any()


def test_identity_is_mean_of_kept_rows_and_near_the_inlier_mean():
    embeddings, is_outlier = _clustered(num_inliers=50, num_outliers=14, dim=256, seed=4)
    result = svd_filter(embeddings)
    identity = identity_from_embeddings(embeddings)
    assert identity.shape == (256,)
    torch.testing.assert_close(identity, embeddings[result.indices].mean(dim=0))
    inlier_mean = embeddings[~is_outlier].mean(dim=0)
    everything_mean = embeddings.mean(dim=0)
    assert (identity - inlier_mean).norm() < (everything_mean - inlier_mean).norm()


def test_vectorised_errors_match_the_row_by_row_reference():
    embeddings = _random(40, 64, seed=5)
    _, _, vh = torch.linalg.svd(embeddings.double(), full_matrices=False)
    expected = []
    for row in embeddings.double():
        reconstruction = sum(torch.dot(row, vh[j]) * vh[j] for j in range(10))
        expected.append(((row - reconstruction) ** 2).mean())
    torch.testing.assert_close(reconstruction_errors(embeddings.double(), 10), torch.stack(expected))


@pytest.mark.parametrize(("n", "d", "rank", "ratio", "iterations"), [(64, 128, 10, 0.6, 3), (50, 64, 5, 0.5, 2)])
def test_vectorised_filter_matches_the_naive_reference(n, d, rank, ratio, iterations):
    embeddings = _random(n, d, seed=n + d).double()
    result = svd_filter(embeddings, rank=rank, keep_ratio=ratio, iterations=iterations)
    assert result.indices.tolist() == _naive_filter(embeddings, rank, ratio, iterations)


def test_deterministic_and_permutation_equivariant():
    embeddings = _random(64, 128, seed=6)
    first, second = svd_filter(embeddings), svd_filter(embeddings.clone())
    assert torch.equal(first.indices, second.indices)
    permutation = torch.randperm(64, generator=torch.Generator().manual_seed(7))
    permuted = svd_filter(embeddings[permutation])
    assert sorted(permutation[permuted.indices].tolist()) == first.indices.tolist()


def test_half_precision_input_is_filtered_in_float32():
    embeddings, is_outlier = _clustered(num_inliers=50, num_outliers=14, dim=128, seed=8)
    result = svd_filter(embeddings.half())
    assert result.embeddings.dtype == torch.float16
    assert result.identity.dtype == torch.float32
    assert not is_outlier[result.indices].any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, "rank must be"),
        ({"rank": 2.5}, "rank must be"),
        ({"keep_ratio": 1.0}, "keep_ratio"),
        ({"keep_ratio": 0}, "keep_ratio"),
        ({"iterations": 0}, "iterations"),
        ({"rank": 64}, "embedding dimension"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        svd_filter(_random(64, 64), **kwargs)


def test_too_few_rows_for_the_rank_names_the_iteration():
    with pytest.raises(ValueError, match=r"iteration 2 of 3 gets 9 rows"):
        svd_filter(_random(16, 64))


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (torch.zeros(4, 3, 2), "2-D"),
        (torch.zeros(4, 3, dtype=torch.int64), "floating-point"),
        (torch.full((30, 20), float("nan")), "NaN"),
        ([[1.0, 2.0]], "torch.Tensor"),
    ],
)
def test_bad_embeddings_are_rejected(embeddings, message):
    with pytest.raises(ValueError, match=message):
        svd_filter(embeddings, rank=1, iterations=1)
