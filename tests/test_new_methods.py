"""BitFit, DoRA and Adapter+ as layers: each against a second, explicit computation of its formula,
fresh and size-0 layers against timm, prefix slicing, folding and exact parameter counts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from tiny import TINY, tiny_vit
from unitune.errors import UniTuneError
from unitune.supernet.merge import _match_timm_bias_kwargs
from unitune.supernet.methods.layers import prefix_slice
from unitune.supernet.methods.adapter_plus import AdapterPlus
from unitune.supernet.methods.bitfit import BitFit, fold_bias
from unitune.supernet.methods.dora import DoRALinear, fold_dora
from unitune.supernet.methods.layers import get_path as _get, out_dim as _out_dim, set_path as _set, unwrap
from unitune.supernet.methods.lora import LORA_PATHS
from unitune.supernet.methods.ssf import SSF_POINTS
from unitune.supernet.model import _strip

VARIANTS = ("cls", "no_qkv_bias")  # the variant every bias-creating fold must survive, and the plain one


def _images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, TINY["img_size"], TINY["img_size"], generator=torch.Generator().manual_seed(seed))


def _randomize(layers, seed: int = 2) -> None:
    """Give every PEFT parameter non-trivial values, so a test sees each term of a formula."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for _, p in layer.peft_named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _peft_numel(layers) -> int:
    return sum(p.numel() for layer in layers for _, p in layer.peft_named_parameters())


# ---- BitFit -----------------------------------------------------------------------------------


def _inject_bitfit(vit: nn.Module) -> list[BitFit]:
    layers = []
    for block in vit.blocks:
        for path in SSF_POINTS:
            module = _get(block, path)
            layer = BitFit(module, _out_dim(unwrap(module), vit.embed_dim))
            _set(block, path, layer)
            layers.append(layer)
    return layers


def test_bitfit_formula_linear_and_layernorm():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    lin, norm = nn.Linear(6, 9), nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    for op, out in ((lin, 9), (norm, 6)):
        layer = BitFit(op, out)
        with torch.no_grad():
            layer.bias_delta.normal_()
        if op is lin:
            expected = x @ lin.weight.T + lin.bias + layer.bias_delta
        else:
            mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
            expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias + layer.bias_delta
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.set_size(0)
        assert torch.equal(layer(x), op(x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bitfit_on_tiny_vit(variant):
    vit = tiny_vit(variant).eval()
    ref = copy.deepcopy(vit)
    x = _images()
    with torch.no_grad():
        base = ref(x)
    layers = _inject_bitfit(vit)
    d, depth = vit.embed_dim, len(vit.blocks)
    # Count: the points' output widths, 11·d per block (d + 3d + d + d + 4d + d).
    assert _peft_numel(layers) == depth * 11 * d == depth * (d + 3 * d + d + d + 4 * d + d)
    with torch.no_grad():
        assert torch.equal(vit(x), base)  # a fresh layer adds an exact zero
        _randomize(layers)
        unmerged = vit(x)
        assert (unmerged - base).abs().max() > 1e-2  # the deltas do change the logits
        for layer in layers:
            layer.set_size(0)
        assert torch.equal(vit(x), base)
        for layer in layers:
            layer.set_size(1)

    # Fold every delta into a wrapper-free copy, then make the created biases timm keywords.
    merged = copy.deepcopy(vit)
    _strip(merged)
    created = []
    for i in range(depth):
        for path in SSF_POINTS:
            layer = _get(vit.blocks[i], path)
            created += [f"blocks.{i}.{path}.{p}" for p in fold_bias(merged.get_submodule(f"blocks.{i}.{path}"),
                                                                     layer.bias_delta)]
    assert created == ([f"blocks.{i}.attn.qkv.bias" for i in range(depth)] if variant == "no_qkv_bias" else [])
    kwargs, added = _match_timm_bias_kwargs(merged, created)
    assert added == []
    with torch.no_grad():
        torch.testing.assert_close(merged(x), unmerged, rtol=0, atol=1e-5)
    # The merged model is a plain timm model of the recorded structure: it loads strictly.
    from tiny import VARIANTS as TV
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                              **{**TINY, **TV[variant], **kwargs})
    plain.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), unmerged, rtol=0, atol=1e-5)


def test_bitfit_fold_refuses_an_op_without_a_bias_slot():
    rms = nn.RMSNorm(4)
    with pytest.raises(UniTuneError, match="cannot fold BitFit into a RMSNorm; expected Linear, Conv2d or a LayerNorm"):
        fold_bias(rms, torch.zeros(4))


def test_bitfit_fold_creates_a_layernorm_bias():
    norm = nn.LayerNorm(4, elementwise_affine=False)
    delta = torch.tensor([0.5, -1.0, 2.0, 0.25])
    x = torch.randn(3, 4)
    expected = norm(x) + delta
    assert fold_bias(norm, delta) == ["bias"]
    torch.testing.assert_close(norm(x), expected)


# ---- DoRA -------------------------------------------------------------------------------------


def _dora_reference(x, weight, bias, A, B, m, scale):
    """DoRA written out in float64: W' = m ⊙ (W + s·B A) / ‖W + s·B A‖ per output row."""
    w = weight.double() + scale * B.double() @ A.double()
    w = m.double()[:, None] * w / w.pow(2).sum(dim=1, keepdim=True).sqrt()
    y = x.double() @ w.T
    return y + bias.double() if bias is not None else y


@pytest.mark.parametrize("bias", [True, False])
def test_dora_formula_fresh_and_size0(bias):
    torch.manual_seed(0)
    lin = nn.Linear(12, 20, bias=bias)
    layer = DoRALinear(lin, max_rank=4, scale=0.5)
    x = torch.randn(3, 7, 12)
    assert torch.equal(layer(x), lin(x))  # fresh: m / ‖W‖ is exactly 1 and B is 0
    torch.testing.assert_close(layer.magnitude, lin.weight.norm(dim=1))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.mul_(torch.rand(20) + 0.5)
    for r in (1, 3, 4):
        layer.set_size(r)
        expected = _dora_reference(x, lin.weight, lin.bias, layer.lora_A[:r], layer.lora_B[:, :r], layer.magnitude, 0.5)
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
        # The count: r·(in + out) + out.
        assert sum(p[tuple(slice(0, s) for s in layer.active_shape(n))].numel()
                   for n, p in layer.peft_named_parameters()) == r * (12 + 20) + 20
    layer.set_size(0)
    assert torch.equal(layer(x), lin(x))


def test_dora_prefix_slice_equals_a_smaller_layer():
    torch.manual_seed(0)
    lin = nn.Linear(8, 24)
    big = DoRALinear(lin, max_rank=6, scale=2.0)
    with torch.no_grad():
        big.lora_B.normal_()
        big.magnitude.add_(0.3)
    big.set_size(3)
    small = DoRALinear(lin, max_rank=3, scale=2.0)
    with torch.no_grad():
        for name, p in small.peft_named_parameters():
            p.copy_(prefix_slice(getattr(big, name), big.active_shape(name)))
    assert small.lora_A.shape == (3, 8) and small.lora_B.shape == (24, 3) and small.magnitude.shape == (24,)
    x = torch.randn(5, 8)
    assert torch.equal(big(x), small(x))


def test_dora_norm_is_detached_from_the_gradient():
    """The chosen training treatment (paper §4.3, HF PEFT): ‖W + s·B A‖ is a constant in backward."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 10)
    layer = DoRALinear(lin, max_rank=2)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    layer(x).square().sum().backward()

    A = layer.lora_A.detach().clone().requires_grad_(True)
    B = layer.lora_B.detach().clone().requires_grad_(True)
    w = lin.weight + B @ A
    for detach in (True, False):
        norm = w.norm(dim=1)
        c = layer.magnitude.detach() / (norm.detach() if detach else norm)
        gA, gB = torch.autograd.grad((x @ (w * c[:, None]).T + lin.bias).square().sum(), (A, B), retain_graph=True)
        close = torch.allclose(layer.lora_B.grad, gB, atol=1e-6) and torch.allclose(layer.lora_A.grad, gA, atol=1e-6)
        assert close == detach


def _inject_dora(vit: nn.Module, rank: int, targets=("qkv",)) -> list[DoRALinear]:
    layers = []
    for block in vit.blocks:
        for t in targets:
            layer = DoRALinear(_get(block, LORA_PATHS[t]), rank, scale=1.0)
            _set(block, LORA_PATHS[t], layer)
            layers.append(layer)
    return layers


@pytest.mark.parametrize("variant", VARIANTS)
def test_dora_on_tiny_vit(variant):
    vit = tiny_vit(variant).eval()
    ref = copy.deepcopy(vit)
    x = _images()
    with torch.no_grad():
        base = ref(x)
    targets = tuple(LORA_PATHS)
    layers = _inject_dora(vit, 4, targets)
    d, depth = vit.embed_dim, len(vit.blocks)
    # r·(in + out) + out per target: qkv d→3d, proj d→d, fc1 d→4d, fc2 4d→d.
    per_block = sum(4 * (i + o) + o for i, o in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)))
    assert _peft_numel(layers) == depth * per_block
    with torch.no_grad():
        assert torch.equal(vit(x), base)
        g = torch.Generator().manual_seed(3)
        for layer in layers:
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
            layer.magnitude.mul_(1 + 0.1 * torch.randn(layer.magnitude.shape, generator=g))
            layer.set_size(3)
        unmerged = vit(x)
        assert (unmerged - base).abs().max() > 1e-2
        merged = copy.deepcopy(vit)
        _strip(merged)
        for i in range(depth):
            for t in targets:
                fold_dora(merged.get_submodule(f"blocks.{i}.{LORA_PATHS[t]}"), _get(vit.blocks[i], LORA_PATHS[t]))
        torch.testing.assert_close(merged(x), unmerged, rtol=0, atol=1e-5)
        if variant == "no_qkv_bias":
            assert merged.blocks[0].attn.qkv.bias is None  # DoRA leaves the bias (here: none) alone
        for layer in layers:
            layer.set_size(0)
        assert torch.equal(vit(x), base)


# ---- Adapter+ ---------------------------------------------------------------------------------


def _inject_adapter_plus(vit: nn.Module, width: int) -> list[AdapterPlus]:
    layers = []
    for i in range(len(vit.blocks)):
        layer = AdapterPlus(vit.blocks[i], vit.embed_dim, width)
        vit.blocks[i] = layer
        layers.append(layer)
    return layers


def test_adapter_plus_init_follows_houlsby():
    torch.manual_seed(0)
    layer = AdapterPlus(nn.Identity(), 64, 16)
    for w in (layer.down_weight, layer.up_weight):
        assert w.abs().max() <= 0.02 and 0.005 < w.std() < 0.012  # N(0, 0.01²) cut at ±2σ: std ≈ 0.0088
    assert torch.equal(layer.adapter_scale, torch.ones(64))
    assert not layer.down_bias.any() and not layer.up_bias.any()


@pytest.mark.parametrize("variant", ("cls", "reg_layerscale", "no_qkv_bias"))
def test_adapter_plus_on_tiny_vit(variant):
    vit = tiny_vit(variant).eval()
    ref = copy.deepcopy(vit)
    x = _images()
    d, depth, k = vit.embed_dim, len(vit.blocks), 8
    layers = _inject_adapter_plus(vit, k)
    assert _peft_numel(layers) == depth * (2 * d * k + k + d + d)
    _randomize(layers)
    with torch.no_grad():
        base = ref(x)
        for layer in layers:
            layer.set_size(0)
        assert torch.equal(vit(x), base)
        for layer in layers:
            layer.set_size(5)
        # Second computation: timm's own blocks, then the post-adapter written out, block by block.
        h = ref.norm_pre(ref._pos_embed(ref.patch_embed(x)))
        for block, layer in zip(ref.blocks, layers):
            z = block(h)  # after the FFN's residual add (and LayerScale)
            a = F.gelu(z @ layer.down_weight[:5].T + layer.down_bias[:5]) @ layer.up_weight[:, :5].T + layer.up_bias
            h = z + layer.adapter_scale * a
        expected = ref.forward_head(ref.norm(h))
        torch.testing.assert_close(vit(x), expected, rtol=1e-5, atol=1e-5)
        assert (expected - base).abs().max() > 1e-2

        # Prefix slicing: width 5 of a width-8 layer is a width-5 layer with the sliced weights.
        small = [AdapterPlus(unwrap(layer), d, 5) for layer in layers]
        for s, layer in zip(small, layers):
            for name, p in s.peft_named_parameters():
                p.copy_(prefix_slice(getattr(layer, name), layer.active_shape(name)))
        vit_small = copy.deepcopy(ref)
        for i, s in enumerate(small):
            vit_small.blocks[i] = s
        assert _peft_numel(small) == depth * (2 * d * 5 + 5 + d + d)
        assert torch.equal(vit_small(x), vit(x))


# ---- through the registry: every method at once ------------------------------------------------

ALL_ON = dict(lora=(0, 2, 3), adapter=(0, 2, 3), vpt=(0, 2), ssf=(0, 1), ssf_global=(0, 1), bitfit=(0, 1),
              dora=(0, 2, 4), adapter_plus=(0, 3, 5))


def _all_on_model(variant: str, folding_only: bool = False):
    from unitune.supernet import PeftViT, SearchSpace, Subnet

    choices = {m: c for m, c in ALL_ON.items() if not folding_only or m in ("lora", "ssf", "ssf_global", "bitfit", "dora")}
    # LoRA and DoRA both on qkv (LoRA wraps DoRA), DoRA on fc1 as well.
    space = SearchSpace(**{"adapter": (0,), "vpt": (0,), **choices}, dora_targets=["qkv", "fc1"],
                        dora_scale=0.5, lora_scale=2.0)
    plain = tiny_vit(variant).eval()
    model = PeftViT(copy.deepcopy(plain), space).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    sizes = {m: (c[-1], 0, c[1], c[-1]) for m, c in choices.items() if m != "ssf_global"}
    subnet = Subnet.uniform(4, ssf_global=1 if "ssf_global" in choices else 0).replace(**sizes)
    model.set_subnet(subnet)
    return plain, model, space, subnet


@pytest.mark.parametrize("variant", ("cls", "reg_layerscale", "no_qkv_bias"))
def test_all_methods_together_materialise_count_and_merge(variant):
    from unitune.supernet.merge import merge
    from unitune.supernet import BackboneDims, count_params

    plain, model, space, subnet = _all_on_model(variant)
    x = _images()
    dims = BackboneDims.from_model(model)
    counted = count_params(subnet, dims, space)
    d = dims.dim
    # The three new methods' per-method totals, by their formulas (blocks 0, 2, 3 on; block 2 smaller).
    assert counted.per_method["bitfit"] == 3 * 11 * d
    assert counted.per_method["dora"] == sum(r * (i + o) + o for r in (4, 2, 4) for i, o in ((d, 3 * d), (d, 4 * d)))
    assert counted.per_method["adapter_plus"] == sum(2 * d * k + k + 2 * d for k in (5, 3, 5))
    small = model.materialize(subnet)
    assert sum(p.numel() for _, p in small.peft_named_parameters()) == counted.total
    with torch.no_grad():
        unmerged = model(x)
        torch.testing.assert_close(small(x), unmerged, atol=1e-6, rtol=0)
        merged = merge(model)
        torch.testing.assert_close(merged.model(x), unmerged, atol=1e-5, rtol=0)
    # What stays a module: Adapter, VPT and Adapter+; LoRA, DoRA, SSF and BitFit folded away.
    left = {m for m in ALL_ON if m != "ssf_global" and any(merged.unmerged[m])}
    assert left == {"adapter", "vpt", "adapter_plus"} and merged.unmerged["ssf_global"] == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_ssf_bitfit_dora_merge_to_a_strict_timm_model(variant):
    from tiny import VARIANTS as TV
    from unitune.supernet.merge import merge

    _, model, _, _ = _all_on_model(variant, folding_only=True)
    x = _images()
    merged = merge(model)
    assert merged.is_plain_timm
    assert merged.model_kwargs == ({"qkv_bias": True} if variant == "no_qkv_bias" else {})
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                            **{**TINY, **TV[variant], **merged.model_kwargs})
    vit.load_state_dict(merged.model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(vit.eval()(x), model(x), atol=1e-5, rtol=0)


D = 768  # ViT-B/16


@pytest.mark.parametrize(
    "sizes, expected, formula",
    [
        (dict(bitfit=1), 101_376, 12 * 11 * D),  # the six points' output widths, 11·d per block
        (dict(dora=8), 322_560, 12 * (8 * (D + 3 * D) + 3 * D)),  # r·(in + out) + out on qkv
        (dict(adapter_plus=8), 165_984, 12 * (2 * D * 8 + 8 + D + D)),  # 2·d·k + k + d + d
    ],
)
def test_vit_b16_figures_of_the_new_methods(sizes, expected, formula):
    """The README's figures, on ViT-B/16 built on the meta device (no weights)."""
    from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params

    with torch.device("meta"):
        dims = BackboneDims.from_model(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100))
    count = count_params(Subnet.uniform(12, **sizes), dims, SearchSpace())
    assert count.total == count.per_method[next(iter(sizes))] == expected == formula


@pytest.mark.parametrize(
    "values, message",
    [
        ({"bitfit": [0, 2]}, "space.bitfit: BitFit is off (0) or on (1), got [0, 2]"),
        ({"dora_targets": ["qkv", "xx"]}, "space.dora_targets: unknown target 'xx', expected one of "
                                          "['qkv', 'proj', 'fc1', 'fc2']"),
        ({"dora_scale": "a"}, "space.dora_scale: expected a finite number, got 'a'"),
        ({"adapter_plus": [0, -1]}, "space.adapter_plus: sizes must be non-negative integers, got -1"),
    ],
)
def test_bad_space_values_of_the_new_methods(values, message):
    from unitune.supernet import SearchSpace

    with pytest.raises(UniTuneError) as err:
        SearchSpace.from_dict(values)
    assert str(err.value) == message


def test_bitfit_is_refused_up_front_where_it_could_not_fold():
    from unitune.supernet import PeftViT, SearchSpace

    vit = tiny_vit("cls", norm_layer="rmsnorm")
    with pytest.raises(UniTuneError) as err:
        PeftViT(vit, SearchSpace(ssf=(0,), ssf_global=(0,), bitfit=(0, 1)))
    assert str(err.value) == (
        "backbone 'vit_tiny_patch16_224': BitFit after block 0's norm1 (a RmsNorm) could not be merged into the "
        "backbone (BitFit folds only into the bias of a Linear, Conv2d or LayerNorm); BitFit must stay off on this "
        "backbone (space.bitfit: [0])")
    PeftViT(vit, SearchSpace(ssf=(0,), ssf_global=(0,), dora=(0, 2), adapter_plus=(0, 2)))  # these need no bias


def test_a_small_subnet_step_leaves_the_new_methods_inactive_entries_alone():
    """The inactive-slice guard with DoRA (A rows, B columns; m whole or nothing), Adapter+ (γ whole
    or nothing) and BitFit (whole or nothing): after a step of a small subnet, AdamW (weight decay,
    momentum from an earlier full-size step) moved every entry that subnet used and nothing else."""
    from unitune.engine.config import TrainConfig
    from unitune.supernet import PeftViT, SearchSpace, Subnet
    from unitune.supernet.guard import InactiveGuard, active_masks
    from unitune.engine.train import build_optimizer

    space = SearchSpace(lora=(0,), adapter=(0,), vpt=(0,), ssf=(0,), ssf_global=(0,), bitfit=(0, 1),
                        dora=(0, 2, 6), adapter_plus=(0, 3, 6), dora_targets=("qkv", "fc2"))
    model = PeftViT(tiny_vit("cls"), space)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    optimizer = build_optimizer(model.trainable_named_parameters(), TrainConfig(lr=1e-2, weight_decay=0.05))
    InactiveGuard(model, optimizer)
    x, labels = _images(4), torch.tensor([0, 1, 2, 3])
    model.train()
    F.cross_entropy(model(x), labels).backward()  # the largest subnet: every entry gets moments
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    model.set_subnet(Subnet.uniform(4).replace(bitfit=(1, 0, 0, 1), dora=(2, 0, 6, 2), adapter_plus=(3, 6, 0, 3)))
    F.cross_entropy(model(x), labels).backward()
    used = active_masks(model)
    params = dict(model.peft_named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    state = {n: {k: v.clone() for k, v in optimizer.state[p].items() if k != "step"} for n, p in params.items()}
    optimizer.step()
    idle = sum(int((~m).sum()) for m in used.values())
    assert idle > 10_000  # whole DoRA, BitFit, Adapter+ layers and the tails of the larger ones
    for name, p in params.items():
        m = used[name]
        assert torch.equal(p.detach()[~m], before[name][~m]), f"{name} moved outside the subnet"
        # Every used entry moves, but for the key third of qkv's BitFit bias: a shift shared by all
        # keys changes no softmax, so its gradient is zero but for rounding (exactly 0, or 1e-20,
        # which no AdamW step can add to 0.1), and whether it moves is decided by rounding.
        live = m.clone()
        if name.endswith("attn.qkv.bias_delta"):
            live[live.shape[0] // 3: 2 * live.shape[0] // 3] = False
        assert not (p.detach()[live] == before[name][live]).any(), f"{name}: a used entry did not move"
        for key, value in state[name].items():
            assert torch.equal(optimizer.state[p][key][~m], value[~m]), f"{name}: {key} changed outside"
