"""TNN-C-CCA: the triplet loss against brute force, training, determinism, saving."""
import itertools

import numpy as np
import pytest
import torch

from models.common.metrics import chance_average_precision, cosine_similarity, mean_average_precision
from models.tnn_ccca.trainer import TNNCCCAConfig, TNNCCCATrainer, branch, triplet_loss


def brute_triplets(a, v, labels, margin):
    """Every (anchor i, positive j != i of i's class, negative k of another class) hinge, looped."""
    d = lambda i, j: float(((a[i] - v[j]) ** 2).sum())  # noqa: E731
    n = len(labels)
    return [max(0.0, d(i, j) - d(i, k) + margin) for i, j, k in itertools.product(range(n), repeat=3)
            if labels[i] == labels[j] and i != j and labels[k] != labels[i]]


def brute_hard(a, v, labels, margin):
    out = []
    for i in range(len(labels)):
        pos = [float(((a[i] - v[j]) ** 2).sum()) for j in range(len(labels)) if labels[j] == labels[i] and j != i]
        neg = [float(((a[i] - v[k]) ** 2).sum()) for k in range(len(labels)) if labels[k] != labels[i]]
        if pos and neg:
            out.append(max(0.0, max(pos) - min(neg) + margin))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_loss_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    a, v = torch.rand(9, 4, generator=g, dtype=torch.float64), torch.rand(9, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3])  # class 3 has a single member: no positive
    loss, frac = triplet_loss(a, v, labels, 0.3, "all")
    want = brute_triplets(a.numpy(), v.numpy(), labels.numpy(), 0.3)
    assert float(loss) == pytest.approx(np.mean(want), abs=1e-12)
    assert frac == pytest.approx(np.mean(np.array(want) > 0))
    loss, _ = triplet_loss(a, v, labels, 0.3, "hard")
    assert float(loss) == pytest.approx(np.mean(brute_hard(a.numpy(), v.numpy(), labels.numpy(), 0.3)), abs=1e-12)
    # no valid triplet (one class): zero loss that still backpropagates
    loss, frac = triplet_loss(a.requires_grad_(), v, torch.zeros(9, dtype=torch.long), 0.3)
    loss.backward()
    assert float(loss.detach()) == 0.0 and frac == 0.0


def test_branch_is_the_reference_stack():
    net = branch(128, TNNCCCAConfig())
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "Tanh", "Dropout"] * 3 + ["Linear", "Tanh", "Dropout", "Sigmoid"]
    assert [m.out_features for m in net if hasattr(m, "out_features")] == [100, 100, 100, 10]
    assert all(m.p == 0.1 for m in net if isinstance(m, torch.nn.Dropout))


def _classes(n, rng, centres):
    labels = rng.integers(0, len(centres[0]), n)
    return (centres[0][labels] + rng.normal(size=(n, centres[0].shape[1])),
            centres[1][labels] + rng.normal(size=(n, centres[1].shape[1])), labels)


def test_training_beats_chance_is_deterministic_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    centres = (rng.normal(size=(5, 16)), rng.normal(size=(5, 24)))
    a, v, y = _classes(400, rng, centres)
    at, vt, yt = _classes(200, rng, centres)
    cfg = {"epochs": 15, "triplet_batch": 40, "seed": 3, "n_components": 8}
    model = TNNCCCATrainer(cfg).fit_arrays(a, v, y)
    assert model.history["loss"][-1] < model.history["loss"][0]
    ea, ev = model.transform(at, vt)
    assert ea.shape == (200, 8) and ev.shape == (200, 8)
    score = mean_average_precision(cosine_similarity(ea, ev), yt, yt)
    assert score > chance_average_precision(yt, yt) + 0.4
    again = TNNCCCATrainer(cfg).fit_arrays(a, v, y).transform(at, vt)
    np.testing.assert_array_equal(again[0], ea)  # same seed, same numbers
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = TNNCCCATrainer(cfg).load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    np.testing.assert_array_equal(loaded.transform(at, vt)[1], ev)


def test_config_checks():
    with pytest.raises(ValueError, match="warmup_epochs"):
        TNNCCCAConfig(mining="hard", epochs=5)
    with pytest.raises(ValueError, match="cannot exceed out_dim"):
        TNNCCCAConfig(n_components=12)
    TNNCCCAConfig(order="ccca-tnn", n_components=12)  # the CCA runs first there: any k
