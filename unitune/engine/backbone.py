"""Create the timm ViT backbone: from the hub, from a local weights file, or randomly initialised."""

from __future__ import annotations

import contextlib
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from unitune.errors import UniTuneError


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | None = None,
    kwargs: dict | None = None,
    meta: bool = False,
    weights_label: str = "model.weights",
    shapes: torch.nn.Module | None = None,
) -> VisionTransformer:
    """A timm ``VisionTransformer`` with a fresh ``num_classes`` head.

    ``weights`` (a local safetensors file or ``torch.save``'d state dict) is loaded by
    :func:`unitune.weights.load_backbone_weights`: every backbone tensor from the file (timm's
    conversion resizes the position embedding), the head replaced, or a one-line error
    (``weights_label`` names where the file came from). ``pretrained`` loads timm's hub weights,
    refused in one line at once when the hub cannot be reached. ``meta=True`` builds on the meta
    device: shapes only, for counting. ``shapes``: that meta build of this backbone, when the
    caller has one (a run's context keeps it), so it is not built again here.
    """
    from unitune.supernet.methods.vit import check_vit

    if not isinstance(name, str) or not timm.is_model(name):
        raise UniTuneError(f"backbone {name!r}: unknown timm model name (see timm.list_models('vit_*'))")
    kwargs = dict(kwargs or {})
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UniTuneError(f"{weights_label}: file not found: {path}")
    if (weights is not None or pretrained) and not meta and shapes is None:
        # Decide the backbone's fate (check_vit) on a shapes-only build before any weight is
        # downloaded or read: a refused family fails in a second, not after a download.
        shapes = create_backbone(name, num_classes, kwargs=kwargs, meta=True)
    offline = None  # why the hub is out of reach (its cache is still read), or None
    if pretrained and weights is None and not meta:
        offline = hub_offline(name, shapes)
        kwargs.update(pretrained=True)
    device = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with device, (hub_cache_only() if offline else contextlib.nullcontext()):
            model = timm.create_model(name, num_classes=num_classes, **kwargs)
    except (RuntimeError, ValueError, KeyError, AssertionError, IndexError, TypeError, OSError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = lines[0]
        if first.startswith("Error(s) in loading state_dict") and len(lines) > 1:  # name the first mismatch
            first = lines[1] + (f" (and {len(lines) - 2} more)" if len(lines) > 2 else "")
        if kwargs.get("pretrained"):
            if isinstance(e, OSError):  # the hub's LocalEntryNotFoundError, a refused connection
                why = f"{offline} and its cache lacks them" if offline else f"failed ({first})"
                raise UniTuneError(hub_message(name, why)) from None
            raise UniTuneError(
                f"backbone {name!r}: could not load pretrained weights ({first}); "
                f"offline, give a local file with model.weights"
            ) from None
        raise UniTuneError(f"backbone {name!r}: timm could not build it with {kwargs}: {first}") from None
    if "img_size" in kwargs or "patch_size" in kwargs:
        # Only sizes the config chose: an architecture's own default is what its weights were
        # trained at (vit_so400m_patch14_siglip_384 tiles 384 px with 14 px patches, dropping 6).
        check_input_size(model, name)
    model = check_vit(model, f"backbone {name!r}")
    if weights is not None:
        from unitune.weights import load_backbone_weights

        load_backbone_weights(model, weights, name, label=weights_label)
    return model


# ---- hub weights -------------------------------------------------------------------------------

HUB_TIMEOUT_S = 5.0  # a reachable hub answers a TCP connect in well under a second


def hub_message(name: str, why: str) -> str:
    return (f"backbone {name!r}: pretrained weights need the model hub, which {why}; give a local file with "
            f"model.weights (`unitune fetch-weights ... --out w.safetensors` writes one where the hub is reachable)")


def reachable(host: str, port: int, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (name lookup
    included: it runs in a thread, since getaddrinfo has no timeout of its own)."""
    import socket
    import threading

    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_offline(name: str, shapes: torch.nn.Module) -> str | None:
    """Why ``pretrained: true`` cannot download (then only the hub cache is read), or None.

    The hub client retries an unreachable host for about a minute and ends in a long traceback;
    a TCP connect with a short timeout decides in seconds instead. HF_HUB_OFFLINE (or
    TRANSFORMERS_OFFLINE) set, now or when huggingface_hub was imported, means the cache only.
    Behind a proxy the check is left to the hub client. Weights on a plain URL (not the hub) that
    cannot be reached are refused here."""
    import os
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    cfg = getattr(shapes, "pretrained_cfg", None) or {}
    hub = bool(cfg.get("hf_hub_id"))
    url = constants.ENDPOINT if hub else cfg.get("url")
    if not url:
        return None  # timm says there are no pretrained weights, in one line
    if hub and (constants.is_offline_mode() or any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
                                                   for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))):
        return "is switched off (HF_HUB_OFFLINE)"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    if not host or reachable(host, port):
        return None
    if not hub:
        raise UniTuneError(hub_message(name, f"is not reachable ({host}:{port})"))
    return f"is not reachable ({host}:{port})"


@contextlib.contextmanager
def hub_cache_only():
    """The hub client in offline mode (it reads ``constants.HF_HUB_OFFLINE`` on every call):
    cached weights load, a miss fails at once instead of after a minute of retries."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def check_input_size(model: torch.nn.Module, name: str) -> None:
    """Refuse an input size the patch embedding cannot tile.

    timm builds a ViT with ``img_size=30, patch_size=8`` without complaint and then silently
    drops the last 6 pixel rows and columns of every image (its strided conv floors); a size
    below the patch size builds too and fails only at the first forward pass.
    """
    embed = getattr(model, "patch_embed", None)
    img_size, patch = getattr(embed, "img_size", None), getattr(embed, "patch_size", None)
    if img_size is None or patch is None or getattr(embed, "dynamic_img_pad", False):
        return
    for size, step in zip(img_size, patch):
        if size < step or size % step:
            fits = max(step, size // step * step)
            raise UniTuneError(
                f"model.kwargs.img_size: {tuple(img_size) if img_size[0] != img_size[1] else size} does not fit "
                f"backbone {name!r}: the input size must be a multiple of its patch size {step} (e.g. {fits} "
                f"or {fits + step})"
            )
