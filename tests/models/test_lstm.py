import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.lstm import GRUCell, LSTMCell

I, H, B, T = 5, 7, 4, 3


def randomise(module: nn.Module) -> nn.Module:
    """Non-trivial values for every parameter (LN gains and biases included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return module


def ln(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5):
    """LN(z; α, β) = α ⊙ (z - μ) / σ + β over the last axis (Eq. 15-16 of Ba et al. 2016)."""
    mu = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)
    return gain * (x - mu) / sigma + bias


def reference_ln_lstm(cell: LSTMCell, x, h, c):
    """Eq. 20-22 of Ba et al. 2016 written out gate by gate."""
    wh = ln(h @ cell.weight_hh.T, cell.ln_hh.weight, cell.ln_hh.bias)
    wx = ln(x @ cell.weight_ih.T, cell.ln_ih.weight, cell.ln_ih.bias)
    pre = wh + wx
    i, f, g, o = pre[:, :H], pre[:, H:2 * H], pre[:, 2 * H:3 * H], pre[:, 3 * H:]
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(ln(c_new, cell.ln_cell.weight, cell.ln_cell.bias))
    return h_new, c_new


def reference_ln_gru(cell: GRUCell, x, h):
    gx = ln(x @ cell.weight_ih.T, cell.ln_ih.weight, cell.ln_ih.bias)
    gh = ln(h @ cell.weight_hh.T, cell.ln_hh.weight, cell.ln_hh.bias)
    r = torch.sigmoid(gx[:, :H] + gh[:, :H])
    z = torch.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = torch.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h


def test_lstm_without_layer_norm_matches_torch_lstm_cell():
    torch.manual_seed(0)
    ours, ref = LSTMCell(I, H), nn.LSTMCell(I, H)
    ours.load_state_dict(ref.state_dict())
    xs = torch.randn(T, B, I)
    state, ref_state = None, None
    for x in xs:
        state = ours(x, state)
        ref_state = ref(x, ref_state)
        torch.testing.assert_close(state[0], ref_state[0])
        torch.testing.assert_close(state[1], ref_state[1])


def test_gru_without_layer_norm_matches_torch_gru_cell():
    torch.manual_seed(0)
    ours, ref = GRUCell(I, H), nn.GRUCell(I, H)
    ours.load_state_dict(ref.state_dict())
    h = ref_h = torch.randn(B, H)
    for x in torch.randn(T, B, I):
        h, ref_h = ours(x, h), ref(x, ref_h)
        torch.testing.assert_close(h, ref_h)


def test_layer_norm_lstm_follows_eq_20_22():
    torch.manual_seed(1)
    cell = randomise(LSTMCell(I, H, layer_norm=True))
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    got = cell(x, (h, c))
    want = reference_ln_lstm(cell, x, h, c)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert not hasattr(cell, "bias_ih")  # b is absorbed into the LN biases


def test_layer_norm_gru_matches_reference():
    torch.manual_seed(2)
    cell = randomise(GRUCell(I, H, layer_norm=True))
    x, h = torch.randn(B, I), torch.randn(B, H)
    torch.testing.assert_close(cell(x, h), reference_ln_gru(cell, x, h))


def first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("cls", [LSTMCell, GRUCell])
def test_layer_norm_makes_the_step_invariant_to_rescaling_input_weights(cls):
    # Table 1 of Ba et al.: LN is invariant to re-scaling a weight matrix (up to its ε);
    # the plain cell is not.
    torch.manual_seed(3)
    x = torch.randn(B, I)
    change = {}
    for layer_norm in (True, False):
        cell = cls(I, H, layer_norm=layer_norm)
        before = first(cell(x))
        with torch.no_grad():
            cell.weight_ih.mul_(3.0)
        change[layer_norm] = (first(cell(x)) - before).abs().max().item()
    assert change[True] < 1e-3
    assert change[False] > 0.05


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("cls", [LSTMCell, GRUCell])
def test_gradients_reach_every_parameter(cls, layer_norm):
    torch.manual_seed(4)
    cell = cls(I, H, layer_norm=layer_norm)
    state = None
    for x in torch.randn(T, B, I):
        state = cell(x, state)
    out = state[0] if isinstance(state, tuple) else state
    F.mse_loss(out, torch.randn_like(out)).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_initial_state_equals_omitted_state():
    cell = LSTMCell(I, H, layer_norm=True)
    x = torch.randn(B, I)
    zeros = torch.zeros(B, H)
    torch.testing.assert_close(cell(x), cell(x, (zeros, zeros)))
