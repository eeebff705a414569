"""Tests of the FNO spectral convolution (graphop.layers.spectral)."""
import itertools

import numpy as np
import pytest
import torch

from graphop.layers.spectral import SpectralConv

torch.set_num_threads(1)


def _direct(x, conv):
    """out_o[x] = sum_{k kept} c_k Re(sum_c R[c,o,k] vhat_c[k] e^{2 pi i k.x/n}), by explicit sums."""
    x = x.double().numpy()
    B, C = x.shape[:2]
    n = x.shape[2:]
    d = len(n)
    W = conv.weight.detach().cdouble().numpy()
    coords = np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), -1).reshape(-1, d)
    flat = x.reshape(B, C, -1)
    out = np.zeros((B, conv.out_channels, coords.shape[0]))
    ranges = [list(range(m)) + list(range(-m, 0)) for m in conv.modes[:-1]] + [list(range(conv.modes[-1]))]
    for k in itertools.product(*ranges):
        # weight block: non-negative k_a at index k_a, negative at m_a + (k_a + m_a)
        widx = tuple(ki if (a == d - 1 or ki >= 0) else 2 * conv.modes[a] + ki for a, ki in enumerate(k))
        phase = np.exp(-2j * np.pi * (coords @ (np.array(k) / np.array(n))))
        vhat = flat @ phase / coords.shape[0]  # [B, C]
        y = vhat @ W[(slice(None), slice(None), *widx)]  # [B, O]
        c = 1 if (k[-1] == 0 or 2 * k[-1] == n[-1]) else 2
        out += c * np.real(y[:, :, None] * np.conj(phase)[None, None, :])
    return out.reshape(B, conv.out_channels, *n)


@pytest.mark.parametrize("shape,modes", [((8, 6), (3, 3)), ((6, 4, 6), (2, 2, 3))])
def test_matches_direct_dft(shape, modes):
    torch.manual_seed(0)
    conv = SpectralConv(3, 2, modes)
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    ref = _direct(x, conv)
    got = conv(x, periodic=True).detach().numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-10 * max(1, np.abs(ref).max())


def test_translation_equivariant_on_periodic_grid():
    torch.manual_seed(1)
    conv = SpectralConv(2, 3, (4, 5)).double()
    x = torch.randn(1, 2, 12, 10, dtype=torch.float64)
    y = conv(x, periodic=True)
    for s in [(3, 0), (0, 7), (5, 2)]:
        ys = conv(torch.roll(x, s, dims=(2, 3)), periodic=True)
        assert torch.allclose(ys, torch.roll(y, s, dims=(2, 3)), atol=1e-12)


def test_identity_weights_reproduce_band_limited_input():
    conv = SpectralConv(1, 1, (4, 4))
    with torch.no_grad():
        conv.weight.fill_(1.0)
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x = (torch.cos(2 * torch.pi * (2 * i + 3 * j) / 16) + 0.5 * torch.sin(2 * torch.pi * (-3 * i + j) / 16)
         + 0.25)[None, None]
    assert torch.allclose(conv(x, periodic=True), x, atol=1e-5)
    # a mode outside the kept band is removed entirely
    hi = torch.cos(2 * torch.pi * 6 * i / 16)[None, None]
    assert conv(hi, periodic=True).abs().max() < 1e-5


def test_zero_padding_for_non_periodic_input():
    torch.manual_seed(2)
    conv = SpectralConv(2, 2, (4, 4), padding=0.25).double()
    x = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    x[..., :, 0] = 1.0  # a feature on the left face only
    y_per, y_pad = conv(x, periodic=True), conv(x, periodic=False)
    assert y_pad.shape == x.shape
    # padding equals an explicit zero-padded periodic convolution, cropped
    xp = torch.nn.functional.pad(x, (0, 4, 0, 4))
    assert torch.allclose(y_pad, conv(xp, periodic=True)[..., :16, :16], atol=1e-12)
    assert not torch.allclose(y_pad, y_per)
    assert conv.pad_amount((16, 10)) == (4, 3)


def test_bad_input_messages():
    conv = SpectralConv(3, 2, (6, 6), padding=0.0)
    with pytest.raises(ValueError, match=r"expects \[B, 3"):
        conv(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="too few for 6 modes"):
        conv(torch.randn(1, 3, 10, 16))
    with pytest.raises(ValueError, match="modes must be"):
        SpectralConv(1, 1, (0, 3))
    assert "modes=(6, 6)" in repr(conv)


def test_gradients_reach_weights_and_input():
    conv = SpectralConv(2, 2, (3, 3)).double()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: conv(x), (x,))
    conv(x).pow(2).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape,modes,periodic,sub", [
    ((16,), (5,), False, None),
    ((8, 6), (3, 3), True, None),
    ((12, 10), (4, 5), False, None),          # padded: 15 x 13, odd last axis
    ((16, 16), (6, 7), False, (3, 4)),        # fewer modes than the weights hold
    ((8, 8), (4, 5), True, None),             # last axis up to its Nyquist mode k = 4
    ((6, 4, 6), (2, 2, 3), False, None),
    ((6, 6, 8), (3, 2, 4), True, (2, 1, 2)),
])
def test_dft_and_fft_paths_agree(shape, modes, periodic, sub):
    """The dense truncated DFT and the rfftn reference compute the same layer, values and
    gradients (input and weights), with padding, sub-modes and Nyquist modes."""
    torch.manual_seed(3)
    conv = SpectralConv(3, 2, modes).double()
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for method in ("dft", "fft"):
        conv.method = method
        conv.zero_grad()
        x.grad = None
        y = conv(x, periodic=periodic, modes=sub)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append((x.grad.clone(), conv.weight.grad.clone()))
    scale = outs[1].abs().max()
    assert outs[0].shape == outs[1].shape == x.shape[:1] + (2,) + tuple(shape)
    assert (outs[0] - outs[1]).abs().max() < 1e-12 * scale
    for g_dft, g_fft in zip(grads[0], grads[1]):
        assert (g_dft - g_fft).abs().max() < 1e-12 * max(1.0, g_fft.abs().max())


@pytest.mark.parametrize("method", ["dft", "fft"])
@pytest.mark.parametrize("shape,modes,periodic", [
    ((16,), (5,), False), ((12, 10), (4, 5), False), ((8, 8), (4, 5), True),
    ((6, 4, 6), (2, 2, 3), False)])
def test_channels_last_and_joined_parts_give_the_same_layer(method, shape, modes, periodic):
    """``channels_last=True`` is the same layer in the other layout, and a tuple of parts is
    the layer on their concatenation: values and gradients of every part and of the weights."""
    torch.manual_seed(5)
    conv = SpectralConv(4, 3, modes, method=method).double()
    x = torch.randn(2, 4, *shape, dtype=torch.float64)
    d = len(shape)

    def run(layout):
        conv.zero_grad()
        a = x[:, :3].clone().requires_grad_()
        b = x[:, 3:].clone().requires_grad_()
        if layout == "first":
            y = conv(torch.cat([a, b], 1), periodic=periodic)
        elif layout == "first-parts":
            y = conv((a, b), periodic=periodic)
        else:                                  # channels last, as two parts
            y = conv((a.movedim(1, -1), b.movedim(1, -1)), periodic=periodic,
                     channels_last=True).movedim(-1, 1)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        return y.detach(), a.grad, b.grad, conv.weight.grad.clone()

    ref = run("first")
    assert ref[0].shape == (2, 3, *shape)
    for layout in ("first-parts", "last"):
        for got, want in zip(run(layout), ref):
            assert got.shape == want.shape
            assert (got - want).abs().max() < 1e-12 * max(1.0, want.abs().max())
    y = conv(x.movedim(1, -1), periodic=periodic, channels_last=True)
    assert y.shape == (2, *shape, 3) and y.dim() == d + 2


def test_dft_path_has_a_second_derivative():
    """The constant-table products differentiate twice (a gradient penalty trains through
    them): the input's second derivative along a direction matches the FFT reference."""
    torch.manual_seed(6)
    conv = SpectralConv(2, 2, (3, 3)).double()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    v = torch.randn_like(x)
    out = []
    for method in ("dft", "fft"):
        conv.method = method
        xi = x.clone().requires_grad_()
        g, = torch.autograd.grad(torch.tanh(conv(xi)).pow(2).sum(), xi, create_graph=True)
        hv, = torch.autograd.grad((g * v).sum(), xi)
        out.append(hv)
    assert out[0].abs().max() > 0
    assert (out[0] - out[1]).abs().max() < 1e-12 * out[1].abs().max()


@pytest.mark.parametrize("channels_last", [False, True])
def test_dft_path_under_autocast(channels_last):
    """Under bfloat16 autocast the layer runs forward and backward (the constant tables meet
    lower-precision gradients) and stays within bfloat16's rounding of the float32 layer."""
    torch.manual_seed(7)
    conv = SpectralConv(4, 3, (3, 3))
    x = torch.randn(2, 4, 12, 10)
    if channels_last:
        x = x.movedim(1, -1).contiguous()
    res = []
    for low in (False, True):
        xi = x.clone().requires_grad_()
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            y = conv(xi, channels_last=channels_last)
        assert y.dtype == (torch.bfloat16 if low else torch.float32)
        y.float().pow(2).sum().backward()
        res.append((y.float().detach(), xi.grad, conv.weight.grad.clone()))
    for got, want in zip(res[1], res[0]):
        assert got.dtype == want.dtype
        assert (got - want).abs().max() < 3e-2 * want.abs().max()


def test_parts_are_checked():
    conv = SpectralConv(3, 2, (3, 3))
    with pytest.raises(ValueError, match=r"expects \[B, 3, <2 grid axes>\] \(joined"):
        conv((torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"expects \[B, <2 grid axes>, 3\] \(joined"):
        conv((torch.randn(1, 8, 8, 2), torch.randn(1, 8, 6, 1)), channels_last=True)
    with pytest.raises(ValueError, match=r"expects \[B, <2 grid axes>, 3\], got \(1, 8, 8\)"):
        conv(torch.randn(1, 8, 8), channels_last=True)
    with pytest.raises(ValueError, match="got list"):
        conv([[1.0]])


def test_dft_path_in_float32_matches_float64():
    torch.manual_seed(4)
    conv = SpectralConv(4, 4, (6, 7), method="dft")
    x = torch.randn(2, 4, 16, 16)
    y32 = conv(x)
    y64 = conv.double()(x.double())
    assert y32.dtype == torch.float32
    assert (y32.double() - y64).abs().max() < 1e-5 * y64.abs().max()


def test_auto_method_takes_the_dft_unless_its_tables_are_large():
    from graphop.layers.spectral import _choose_method

    assert _choose_method((20, 20), (6, 7)) == "dft"
    assert _choose_method((640, 640), (16, 16)) == "dft"
    assert _choose_method((10**6, 8), (64, 4)) == "fft"   # 2 GB of tables


def test_method_is_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        SpectralConv(1, 1, (3, 3), method="fastest")
    assert "method='fft'" in repr(SpectralConv(1, 1, (3, 3), method="fft"))
