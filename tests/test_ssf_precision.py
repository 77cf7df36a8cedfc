"""SSF under bf16 autocast keeps the activation's dtype (issue 13).

CPU bf16 autocast stands in for CUDA's: the promotion rule (bf16 activation times an fp32
parameter gives fp32) is the same on both.
"""

from __future__ import annotations

import torch
from torch import nn

from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.methods.ssf import SSF

from tiny import tiny_vit

BF16 = dict(rtol=1.6e-2, atol=1e-2)  # a few bf16 ulps


def ssf_on(dim_in: int = 64, dim_out: int = 256, seed: int = 0) -> SSF:
    torch.manual_seed(seed)
    layer = SSF(nn.Linear(dim_in, dim_out), dim_out)
    with torch.no_grad():
        layer.ssf_scale.add_(torch.randn(dim_out) * 0.3)
        layer.ssf_shift.add_(torch.randn(dim_out) * 0.3)
    return layer


def test_ssf_keeps_bf16_under_autocast():
    layer = ssf_on()
    x = torch.randn(4, 10, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        op = layer.module(x)  # the wrapped linear alone, bf16 under autocast
    assert op.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    reference = op.float() * layer.ssf_scale.detach() + layer.ssf_shift.detach()  # fp32 from the same op output
    torch.testing.assert_close(y.float(), reference, **BF16)
    # Gradients reach the fp32 parameters, in fp32.
    y.float().sum().backward()
    assert layer.ssf_scale.grad.dtype == torch.float32
    torch.testing.assert_close(layer.ssf_scale.grad, op.float().sum((0, 1)), **BF16)
    torch.testing.assert_close(layer.ssf_shift.grad, torch.full((256,), 40.0))


def test_ssf_in_fp32_is_the_plain_expression():
    layer = ssf_on()
    x = torch.randn(4, 10, 64)
    y = layer(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, layer.module(x) * layer.ssf_scale + layer.ssf_shift)  # bit for bit


def test_ssf_layers_of_a_vit_stay_bf16_under_autocast():
    """In a whole model every SSF output (qkv, proj, fc1, fc2, norms) is bf16 wherever its op's is."""
    model = PeftViT(tiny_vit(), SearchSpace())
    model.set_subnet(Subnet.uniform(4, ssf=1, ssf_global=1))
    seen = []

    def record(module, args, output):
        inner = module.module(*args)
        seen.append((inner.dtype, output.dtype))

    ssf_layers = [m for m in model.modules() if isinstance(m, SSF)]
    assert len(ssf_layers) > 4
    handles = [m.register_forward_hook(record) for m in ssf_layers]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert len(seen) == len(ssf_layers)
    assert all(out == inner for inner, out in seen), seen
    assert (torch.bfloat16, torch.bfloat16) in seen
