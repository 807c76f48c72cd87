"""The VSE hinge loss and VASE's reconstruction, against direct loops over the definitions."""
import numpy as np
import pytest
import torch

from models.common.losses import ContrastiveLoss, attention_rebuild, distillation_kl, l2norm, reconstruction_loss


def _naive_vse(a: np.ndarray, b: np.ndarray, margin: float, hardest: bool, direction: str = "both") -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = a @ b.T
    n = len(a)
    total = 0.0
    for i in range(n):
        to_b = [max(0.0, margin + s[i, j] - s[i, i]) for j in range(n) if j != i]  # query a[i]
        to_a = [max(0.0, margin + s[j, i] - s[i, i]) for j in range(n) if j != i]  # query b[i]
        keep = {"both": (to_b, to_a), "a2b": (to_b,), "b2a": (to_a,)}[direction]
        total += sum(max(c) if hardest else sum(c) for c in keep)
    return total


@pytest.mark.parametrize("hardest", [False, True])
def test_contrastive_loss_matches_the_definition(hardest):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    got = ContrastiveLoss(0.2, max_violation=hardest)(torch.tensor(a), torch.tensor(b))
    assert got.item() == pytest.approx(_naive_vse(a, b, 0.2, hardest), rel=1e-5)


@pytest.mark.parametrize("direction", ["a2b", "b2a", "both"])
@pytest.mark.parametrize("hardest", [False, True])
def test_contrastive_loss_directions_match_the_definition(direction, hardest):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    got = ContrastiveLoss(0.3, max_violation=hardest, direction=direction)(torch.tensor(a), torch.tensor(b))
    assert got.item() == pytest.approx(_naive_vse(a, b, 0.3, hardest, direction), rel=1e-5)
    # a2b with `a` and `b` swapped is b2a: the queries are the other side's rows
    swapped = {"a2b": "b2a", "b2a": "a2b", "both": "both"}[direction]
    assert ContrastiveLoss(0.3, hardest, swapped)(torch.tensor(b), torch.tensor(a)).item() == pytest.approx(got.item())
    with pytest.raises(ValueError, match="direction"):
        ContrastiveLoss(direction="ab")


def test_distillation_kl_matches_a_loop():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(5), size=3)
    p[0, 2] = 0.0  # a zero probability costs nothing (0 log 0 = 0)
    p[0] /= p[0].sum()
    s = rng.normal(size=(3, 5))
    want = 0.0
    for i in range(3):
        q = np.exp(s[i] - s[i].max()) / np.exp(s[i] - s[i].max()).sum()
        want += sum(p[i, k] * np.log(p[i, k] / q[k]) for k in range(5) if p[i, k] > 0)
    assert distillation_kl(torch.tensor(p), torch.tensor(s)).item() == pytest.approx(want / 3, rel=1e-5)
    # a student that reproduces the teacher costs nothing; the teacher is the first argument
    assert distillation_kl(torch.tensor(p[1:]), torch.log(torch.tensor(p[1:]))).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        distillation_kl(torch.ones(2, 3), torch.ones(2, 4))


def test_contrastive_loss_is_cosine_and_excludes_the_positive_pair():
    eye = torch.eye(4)
    # orthonormal pairs: positives score 1, negatives 0 -> every hinge is max(0, 0.2 + 0 - 1) = 0
    assert ContrastiveLoss(0.2)(eye, eye * 3.0).item() == 0.0  # scale does not matter (cosine)
    # identical rows everywhere: each of the n-1 negatives costs the margin, both ways
    same = torch.ones(4, 3)
    assert ContrastiveLoss(0.2)(same, same).item() == pytest.approx(2 * 4 * 3 * 0.2)
    assert ContrastiveLoss(0.2, max_violation=True)(same, same).item() == pytest.approx(2 * 4 * 0.2)


def test_contrastive_loss_refuses_unpaired_batches():
    with pytest.raises(ValueError, match="pairs"):
        ContrastiveLoss()(torch.ones(3, 2), torch.ones(4, 2))


def test_two_stream_rebuild_is_the_vase_formula():
    rng = np.random.default_rng(1)
    im, aud = (l2norm(torch.tensor(rng.normal(size=(6, 4)))) for _ in range(2))
    s = torch.nn.functional.leaky_relu(im @ aud.T, 0.1)
    s = s / s.norm(dim=1, keepdim=True)
    w = torch.softmax(6.0 * s, dim=1)
    assert torch.allclose(attention_rebuild(im, aud, 6.0), w @ aud)
    assert torch.allclose(w.sum(1), torch.ones(6, dtype=w.dtype))


def test_reconstruction_loss_rounds_and_three_views():
    rng = np.random.default_rng(2)
    views = [l2norm(torch.tensor(rng.normal(size=(5, 4)), requires_grad=True)) for _ in range(3)]
    one = reconstruction_loss(views, 4.0, rounds=1)
    two = reconstruction_loss(views, 4.0, rounds=2)
    assert one.item() > 0 and two.item() > 0 and one.item() != two.item()
    # three views: each is rebuilt from the other two stacked (2B sources)
    first = attention_rebuild(views[0], torch.cat([views[1], views[2]]), 4.0)
    assert first.shape == (5, 4)
    two.backward()  # differentiable end to end
    # a very sharp softmax over identical copies rebuilds each item from itself: loss -> 0
    x = l2norm(torch.tensor(rng.normal(size=(5, 4))))
    assert reconstruction_loss([x, x.clone()], 1e4, rounds=2).item() < 1e-6
