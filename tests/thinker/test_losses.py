import pytest
import torch
import torch.nn.functional as F

from omni.losses import IGNORE_INDEX, linear_cross_entropy


@pytest.mark.parametrize("chunk", [3, 7, 64])
def test_matches_full_logits_cross_entropy(chunk):
    torch.manual_seed(0)
    h = torch.randn(20, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (20,))
    y[[2, 11]] = IGNORE_INDEX
    ref = F.cross_entropy(h @ w.T, y, ignore_index=IGNORE_INDEX)
    gh_ref, gw_ref = torch.autograd.grad(ref * 3.0, (h, w))
    out = linear_cross_entropy(h, w, y, chunk=chunk)
    gh, gw = torch.autograd.grad(out * 3.0, (h, w))
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(gh, gh_ref, atol=1e-5) and torch.allclose(gw, gw_ref, atol=1e-5)
    assert gh[2].abs().max() == 0  # ignored rows get no gradient
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, y, chunk=chunk), ref, atol=1e-5)
        total = linear_cross_entropy(h, w, y, chunk=chunk, reduction="sum")
        assert torch.allclose(total, ref * 18, atol=1e-4)


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = (torch.randn(100, 32) * 0.1).requires_grad_()
    y = torch.randint(0, 100, (64,))
    ref = F.cross_entropy(h @ w.T, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(h, w, y)
    out.backward()
    assert out.dtype == torch.float32 and abs(out.item() - ref.item()) < 0.02
    assert w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
