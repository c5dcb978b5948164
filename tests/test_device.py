import pytest
import torch

from vtn.device import to_device


def test_to_device_cpu_is_exact_and_casts():
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7.0
    assert to_device(t, "cpu") is t  # nothing to do: no copy
    assert to_device(t, None) is t
    c = to_device(t, torch.device("cpu"), torch.float32)
    assert c.dtype == torch.float32 and torch.equal(c, t.float())
    i = to_device(torch.tensor([[0, 2], [1, 0]]), "cpu")
    assert i.dtype == torch.long and i.tolist() == [[0, 2], [1, 0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_cuda_does_not_synchronise():
    t = torch.rand(2, 3, 5, 5, 5, dtype=torch.float64)
    torch.cuda.set_sync_debug_mode("error")
    try:
        g = to_device(t, "cuda", torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert g.device.type == "cuda" and torch.equal(g.cpu(), t.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fill_kernels_give_the_same_constants_as_a_host_copy(dtype):
    """vtn.functional builds per-axis constants on a GPU with ``torch.full`` (no host copy):
    the same roundings as ``torch.tensor``."""
    values = [2.0 / 127, 2.0 / 95, 63 / 2.0, 1.0 / 3.0]
    filled = torch.stack([torch.full((), v, dtype=dtype) for v in values])
    assert torch.equal(filled, torch.tensor(values, dtype=dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_warp_and_affine_flow_do_not_synchronise():
    from vtn.functional import affine_flow, centered_grid, warp

    img = torch.rand(2, 1, 8, 9, 10, device="cuda")
    flow = torch.rand(2, 3, 8, 9, 10, device="cuda")
    W = torch.rand(2, 3, 3, device="cuda") * 0.1
    b = torch.rand(2, 3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = warp(img, flow)
        aff = affine_flow(W, b, (8, 9, 10))
        grid = centered_grid((8, 9, 10), device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), warp(img.cpu(), flow.cpu()))
    torch.testing.assert_close(aff.cpu(), affine_flow(W.cpu(), b.cpu(), (8, 9, 10)))
    assert torch.equal(grid.cpu(), centered_grid((8, 9, 10)))
