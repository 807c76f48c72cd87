"""The plain-torch SRU against a unit-by-unit loop written from the equations (sru 2.1.3, v1, tanh, skip term,
rescale=False), with and without the skip projection, with the dropout masks where the package puts them; the
caption encoder's last-valid-step choice, padding invariance, and gradients."""
import math

import pytest
import torch

from models.common.sru import SRU, SRUCell, SruEncoder


def _reference(sru: SRU, x: torch.Tensor, c0: torch.Tensor | None = None,
               masks: list[tuple[torch.Tensor | None, torch.Tensor | None]] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item, per step, per layer, per unit, from the equations:
    x~ = x.W[:, jk], f = sigmoid(x.W[:, jk+1] + b_f[j]), r = sigmoid(x.W[:, jk+2] + b_r[j]),
    c = f c + (1 - f) x~, h = r tanh(c) m_c + (1 - r) x' with x' = x[j] (n_in == n_out) or x.W[:, jk+3],
    the input mask m_x multiplying x inside the products only. `masks[layer] = (m_x [B, n_in], m_c [B, H])`."""
    steps, batch, _ = x.shape
    out = torch.zeros(steps, batch, sru.hidden_size, dtype=x.dtype)
    last = torch.zeros(sru.num_layers, batch, sru.hidden_size, dtype=x.dtype)
    for b in range(batch):
        seq = [x[t, b] for t in range(steps)]
        for li, cell in enumerate(sru.rnn_lst):
            w, bias, k, n = cell.weight.detach(), cell.bias.detach(), cell.k, cell.hidden_size
            m_x, m_c = masks[li] if masks else (None, None)
            c = [float(c0[li, b, j]) if c0 is not None else 0.0 for j in range(n)]
            new_seq = []
            for t in range(steps):
                xt = seq[t]
                xm = xt * m_x[b] if m_x is not None else xt
                h = torch.zeros(n, dtype=x.dtype)
                for j in range(n):
                    x_tilde = float(torch.dot(xm, w[:, j * k]))
                    f = 1 / (1 + math.exp(-(float(torch.dot(xm, w[:, j * k + 1])) + float(bias[j]))))
                    r = 1 / (1 + math.exp(-(float(torch.dot(xm, w[:, j * k + 2])) + float(bias[n + j]))))
                    c[j] = f * c[j] + (1 - f) * x_tilde
                    skip = float(xt[j]) if k == 3 else float(torch.dot(xm, w[:, j * k + 3]))
                    g = math.tanh(c[j]) * (float(m_c[b, j]) if m_c is not None else 1.0)
                    h[j] = r * g + (1 - r) * skip
                new_seq.append(h)
            seq = new_seq
            last[li, b] = torch.tensor(c, dtype=x.dtype)
        for t in range(steps):
            out[t, b] = seq[t]
    return out, last


def _randomise_biases(sru: SRU) -> None:
    with torch.no_grad():
        for cell in sru.rnn_lst:
            cell.bias.normal_()  # 0 at init: give the forget and reset halves different values to check their order


@pytest.mark.parametrize("n_in,hidden", [(3, 4), (4, 4)])
def test_matches_the_equations_in_eval_mode(n_in, hidden):
    torch.manual_seed(0)
    sru = SRU(n_in, hidden, num_layers=2, dropout=0.25, rnn_dropout=0.25).double().eval()
    _randomise_biases(sru)
    assert [c.k for c in sru.rnn_lst] == ([4, 3] if n_in != hidden else [3, 3])
    x = torch.randn(5, 2, n_in, dtype=torch.float64)
    c0 = torch.randn(2, 2, hidden, dtype=torch.float64)
    for init in (None, c0):
        out, last = sru(x, init)
        ref_out, ref_last = _reference(sru, x, init)
        assert out.shape == (5, 2, hidden) and last.shape == (2, 2, hidden)
        torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(last, ref_last, rtol=1e-12, atol=1e-12)


def test_dropout_masks_are_per_sequence_and_where_the_package_puts_them(monkeypatch):
    torch.manual_seed(0)
    sru = SRU(3, 4, num_layers=3, dropout=0.5, rnn_dropout=0.25).double().train()
    _randomise_biases(sru)
    drawn: list[tuple[tuple[int, ...], float, torch.Tensor]] = []
    original = SRUCell._mask

    def recording(self, size, p):
        m = original(self, size, p)
        drawn.append((tuple(size), p, m))
        return m

    monkeypatch.setattr(SRUCell, "_mask", recording)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out, last = sru(x)
    # per layer: the input mask [B, n_in] (every layer), then the state mask [B, H] (all but the last layer)
    assert [(s, p) for s, p, _ in drawn] == [((2, 3), 0.25), ((2, 4), 0.5), ((2, 4), 0.25), ((2, 4), 0.5),
                                           ((2, 4), 0.25)]
    assert all(set(m.unique().tolist()) <= {0.0, 1 / (1 - p)} for _, p, m in drawn)
    masks = [(drawn[0][2], drawn[1][2]), (drawn[2][2], drawn[3][2]), (drawn[4][2], None)]
    ref_out, ref_last = _reference(sru, x, masks=masks)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, ref_last, rtol=1e-12, atol=1e-12)
    drawn.clear()
    sru.eval()
    sru(x)
    assert drawn == []  # no dropout in eval mode


def test_dropout_active_in_train_mode_only():
    torch.manual_seed(0)
    enc = SruEncoder(num_layers=2, dim_in=6, dim_out=8, dropout=0.25)
    x, lengths = torch.randn(3, 5, 6), torch.tensor([5, 3, 1])
    enc.train()
    assert not torch.allclose(enc(x, lengths), enc(x, lengths))
    enc.eval()
    torch.testing.assert_close(enc(x, lengths), enc(x, lengths), rtol=0, atol=0)
    no_dropout = SruEncoder(num_layers=2, dim_in=6, dim_out=8, dropout=0.0)
    no_dropout.load_state_dict(enc.state_dict())
    torch.testing.assert_close(no_dropout.train()(x, lengths), enc(x, lengths))


def test_init_and_layout_follow_the_package():
    torch.manual_seed(0)
    sru = SRU(620, 24, num_layers=4, dropout=0.25, rnn_dropout=0.25)
    cells = list(sru.rnn_lst)
    assert [tuple(c.weight.shape) for c in cells] == [(620, 96), (24, 72), (24, 72), (24, 72)]
    assert [c.dropout for c in cells] == [0.25, 0.25, 0.25, 0.0] and all(c.rnn_dropout == 0.25 for c in cells)
    for c in cells:
        bound = math.sqrt(3 / c.input_size)
        assert c.weight.abs().max() <= bound and c.weight.abs().max() > 0.9 * bound
        assert c.bias.abs().sum() == 0 and c.weight_c.abs().sum() == 0 and c.scale_x.item() == 1
    assert sorted(sru.state_dict()) == sorted(f"rnn_lst.{i}.{n}" for i in range(4)
                                              for n in ("weight", "bias", "weight_c", "scale_x"))
    state = sru.state_dict()
    state["rnn_lst.1.weight_c"] = torch.ones(48)  # a v2 checkpoint's peephole weights
    with pytest.raises(RuntimeError, match="v1=True"):
        SRU(620, 24, num_layers=4).load_state_dict(state)


def _encoder() -> SruEncoder:
    torch.manual_seed(0)
    enc = SruEncoder(num_layers=2, dim_in=5, dim_out=6, dropout=0.25).double().eval()
    _randomise_biases(enc.rnn)
    return enc


def test_encoder_takes_the_last_valid_step():
    enc = _encoder()
    x, lengths = torch.randn(4, 7, 5, dtype=torch.float64), torch.tensor([7, 3, 1, 5])
    out = enc(x, lengths)
    assert out.shape == (4, 6)
    full, _ = enc.rnn(x.transpose(0, 1))
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[i], full[n - 1, i], rtol=0, atol=0)
        alone, _ = enc.rnn(x[i:i + 1, :n].transpose(0, 1))
        torch.testing.assert_close(out[i], alone[-1, 0])
        for wrong in (n - 2, n):  # an off-by-one either way would be seen
            if 0 <= wrong < 7:
                assert not torch.allclose(out[i], full[wrong, i])
    for bad in (torch.tensor([7, 0, 1, 5]), torch.tensor([8, 3, 1, 5]), torch.tensor([7, 3])):
        with pytest.raises(ValueError, match="lengths"):
            enc(x, bad)


def test_padding_after_the_end_changes_nothing():
    enc = _encoder()
    lengths = torch.tensor([2, 6, 4])
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    valid = torch.arange(6)[None, :, None] < lengths[:, None, None]
    zeros, garbage = x * valid, torch.where(valid, x, torch.full_like(x, 1e3))
    torch.testing.assert_close(enc(zeros, lengths), enc(garbage, lengths), rtol=0, atol=0)
    longer = torch.cat([zeros, torch.randn(3, 4, 5, dtype=torch.float64)], dim=1)
    # more steps: the one matrix product may block differently, so the last bit may differ
    torch.testing.assert_close(enc(longer, lengths), enc(zeros, lengths), rtol=1e-12, atol=1e-12)


def test_gradients_flow_to_every_parameter_and_only_to_valid_steps():
    torch.manual_seed(0)
    enc = SruEncoder(num_layers=3, dim_in=5, dim_out=6, dropout=0.25).train()
    x = torch.randn(3, 6, 5, requires_grad=True)
    lengths = torch.tensor([6, 2, 4])
    enc(x, lengths).pow(2).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(b.requires_grad for b in enc.buffers())
    for i, n in enumerate(lengths.tolist()):
        assert x.grad[i, :n].abs().sum() > 0
        assert x.grad[i, n:].abs().sum() == 0


def test_last_state_and_shapes_validated():
    torch.manual_seed(0)
    sru = SRU(4, 3, num_layers=2, dropout=0, rnn_dropout=0).eval()
    x = torch.randn(5, 2, 4)
    out, last = sru(x)
    # the last cell state of the first 4 steps is the initial state that continues to step 5
    _, mid = sru(x[:4])
    out5, _ = sru(x[4:], mid)
    torch.testing.assert_close(out5[0], out[4])
    assert last.shape == (2, 2, 3)
    with pytest.raises(ValueError, match=r"\[T, B, 4\]"):
        sru(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="c0"):
        sru(x, torch.zeros(1, 2, 3))
