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
