"""CCA and Cluster-CCA: the solver, the class-sum cross-covariance, beta = 1, planted subspaces."""
import numpy as np
import pytest
import torch

from models.tnn_ccca.cca import CCA
from models.tnn_ccca.cluster_cca import ClusterCCA, cluster_cross_covariance, naive_cluster_cross_covariance


def planted(n: int, rng: np.random.Generator, classes: int = 6, shared: int = 3, dx: int = 20, dy: int = 30,
            noise: float = 0.3, mix: tuple[np.ndarray, np.ndarray] | None = None) -> tuple:
    """Views X = Z A + noise, Y = Z B + noise sharing a `shared`-dim latent Z that depends on the class."""
    centres = np.random.default_rng(123).normal(size=(classes, shared)) * 2
    labels = rng.integers(0, classes, n)
    z = centres[labels] + 0.3 * rng.normal(size=(n, shared))
    a, b = mix if mix is not None else (rng.normal(size=(shared, dx)), rng.normal(size=(shared, dy)))
    return z @ a + noise * rng.normal(size=(n, dx)), z @ b + noise * rng.normal(size=(n, dy)), labels, z, (a, b)


def test_class_sum_cross_covariance_equals_materialised_pairs():
    rng = np.random.default_rng(0)
    labels = np.array(["dog", "rain"] * 20 + ["drum"] * 7)  # unequal classes, string labels
    x, y = rng.normal(size=(47, 5)), rng.normal(size=(47, 9))  # views of different dims
    xc = torch.as_tensor(x - x.mean(0), dtype=torch.float64)
    yc = torch.as_tensor(y - y.mean(0), dtype=torch.float64)
    ours = cluster_cross_covariance(xc, yc, labels).numpy()
    assert ours.shape == (5, 9)
    np.testing.assert_allclose(ours, naive_cluster_cross_covariance(x, y, labels), rtol=0, atol=1e-13)


def test_beta_one_is_plain_cca():
    rng = np.random.default_rng(1)
    x, y, labels, _, _ = planted(300, rng)
    cca = CCA(n_components=5, reg=1e-3).fit(x, y)
    ccca = ClusterCCA(n_components=5, beta=1.0, reg=1e-3).fit(x, y, labels)
    np.testing.assert_allclose(ccca.correlations_, cca.correlations_, rtol=0, atol=1e-12)
    for got, want in zip(ccca.transform(x[:20], y[:20]), cca.transform(x[:20], y[:20])):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # and beta < 1 really changes the solution
    assert not np.allclose(ClusterCCA(5, beta=0.2, reg=1e-3).fit(x, y, labels).correlations_, cca.correlations_)


def test_cca_variates_are_whitened_and_correlate_by_the_reported_values():
    rng = np.random.default_rng(2)
    x, y, labels, _, _ = planted(500, rng)
    cca = CCA(n_components=4, reg=0.0).fit(x, y)
    u, v = cca.transform(x, y)
    m = len(x) - 1
    np.testing.assert_allclose(u.T @ u / m, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(v.T @ v / m, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(u.T @ v / m, np.diag(cca.correlations_), atol=1e-9)
    assert np.all(np.diff(cca.correlations_) <= 1e-12)  # descending


def test_cluster_cca_recovers_a_planted_shared_subspace():
    rng = np.random.default_rng(3)
    x, y, labels, _, mix = planted(2000, rng)
    model = ClusterCCA(n_components=6, beta=0.2, reg=1e-4).fit(x, y, labels)
    # three directions carry the shared latent, the other three only noise
    assert model.correlations_[2] > 0.9 and model.correlations_[3] < 0.3
    xt, yt, _, zt, _ = planted(1000, rng, mix=mix)  # held-out data from the same generator
    u, v = model.transform(xt, yt)
    for view in (u[:, :3], v[:, :3]):  # the top variates are a linear function of the latent
        coef, *_ = np.linalg.lstsq(np.c_[zt, np.ones(len(zt))], view, rcond=None)
        resid = view - np.c_[zt, np.ones(len(zt))] @ coef
        assert 1 - resid.var(0).sum() / view.var(0).sum() > 0.97
    assert all(abs(np.corrcoef(u[:, i], v[:, i])[0, 1]) > 0.9 for i in range(3))


def test_state_dict_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    x, y, labels, _, _ = planted(200, rng)
    model = ClusterCCA(4).fit(x, y, labels)
    torch.save({k: torch.as_tensor(v) for k, v in model.state_dict().items()}, tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    again = ClusterCCA(4).load_state_dict({k: v.numpy() for k, v in state.items()})
    for a, b in zip(again.transform(x, y), model.transform(x, y)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="same rows"):
        ClusterCCA(4).fit(x, y[:-1], labels)
    with pytest.raises(ValueError, match="n_components must be in 1..20"):
        ClusterCCA(21).fit(x, y, labels)
    with pytest.raises(ValueError, match="one entry per row"):
        ClusterCCA(4).fit(x, y, labels[:-1])
    with pytest.raises(ValueError, match="NaN"):
        ClusterCCA(4).fit(np.where(np.eye(*x.shape) > 0, np.nan, x), y, labels)
    with pytest.raises(RuntimeError, match="not fitted"):
        CCA(2).transform(x, y)
    with pytest.raises(ValueError, match="beta"):
        ClusterCCA(2, beta=1.5)


def test_beta_weights_the_paired_cross_covariance():
    from models.tnn_ccca.cca import covariances, solve_cca

    rng = np.random.default_rng(4)
    x, y, labels, _, _ = planted(200, rng)
    beta = 0.25
    model = ClusterCCA(n_components=3, beta=beta, reg=1e-3).fit(x, y, labels)
    _, _, _, _, sxx, syy, paired = covariances(x, y, 1e-3, torch.device("cpu"))
    cluster = torch.as_tensor(naive_cluster_cross_covariance(x, y, labels))
    _, _, want = solve_cca(sxx, syy, beta * paired + (1 - beta) * cluster, 3)  # Σ12 = β·paired + (1-β)·cluster
    np.testing.assert_allclose(model.correlations_, want.numpy(), rtol=0, atol=1e-10)
    _, _, swapped = solve_cca(sxx, syy, (1 - beta) * paired + beta * cluster, 3)
    assert not np.allclose(model.correlations_, swapped.numpy(), atol=1e-6)
