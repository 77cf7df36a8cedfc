"""What the supernet and retrain stages share: device and distributed setup, optimiser and
schedule, the loss, evaluation, RNG state and checkpoints.

Optimisation follows the VTAB / few-shot recipes of the literature: AdamW, a cosine schedule
with linear warm-up stepped per update (timm's ``CosineLRScheduler``), label smoothing, and
mixup / cutmix through timm's ``Mixup``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import resource
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from torch import nn
from tqdm import tqdm

from unitune.errors import DivergedError, UniTuneError
from unitune.io import atomic_path
from unitune.supernet.methods.base import BACKBONE_FAMILY, HEAD_FAMILY
from unitune.supernet.methods.vit import classifier_heads
from unitune.supernet.wrap import adamw

from .config import TrainConfig

if TYPE_CHECKING:
    from unitune.progress import StageProgress


# ---- device and processes ---------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    from unitune.checks import check_device

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        # Checked here, not at the first .to(device): CUDA's own error comes from deep in a stage.
        if not torch.cuda.is_available():
            raise UniTuneError(f"device {name!r}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UniTuneError(f"device {name!r}: this machine has {count} CUDA device"
                               f"{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})")
    return device


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 when launched plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        # Each rank on its own GPU before NCCL starts: otherwise every rank's CUDA context and
        # NCCL communicator land on cuda:0 (and ``device`` "cuda" means the current device).
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked; plain fp32 on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def full_fp32():
    """fp32 matmuls and convolutions on CUDA, TF32 off (cuDNN allows TF32 convolutions by
    default): scores must not depend on how the weights were grouped, and a merged export
    folds global SSF into the patch-embedding convolution. No effect on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


# ---- optimisation -----------------------------------------------------------------------------


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig,
                    no_weight_decay: Iterable[str] = (),
                    family_of: Callable[[str], str] | None = None) -> torch.optim.AdamW:
    """AdamW at the recipe's lr and weight decay (:func:`unitune.supernet.wrap.adamw`: no weight
    decay on 1-d parameters nor on the names in ``no_weight_decay``), each optimiser family at its
    ``cfg.lr_mult`` multiplier; ``family_of`` names a parameter's family (a PEFT model's
    ``param_family``, or :func:`plain_family` for a timm model trained whole)."""
    return adamw(named_params, cfg.lr, cfg.weight_decay, no_weight_decay, cfg.lr_mult, family_of)


def plain_family(vit: nn.Module) -> Callable[[str], str]:
    """The family of a timm model's parameter names (full fine-tuning, pretraining): its
    classifier heads are ``head``, every other weight ``backbone``."""
    heads = set(classifier_heads(vit))
    return lambda name: HEAD_FAMILY if name.partition(".")[0] in heads else BACKBONE_FAMILY


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Cosine decay to ``min_lr`` over all updates, after ``warmup_epochs`` of linear warm-up."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_epochs * steps_per_epoch
    return CosineLRScheduler(
        optimizer,
        t_initial=total,
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=cfg.min_lr if warmup else cfg.lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


class Criterion:
    """Cross-entropy with label smoothing, or soft-target CE when mixup / cutmix are on."""

    def __init__(self, cfg: TrainConfig, num_classes: int):
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                num_classes=num_classes,
            )
            self.soft = SoftTargetCrossEntropy()
        self.label_smoothing = cfg.label_smoothing

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup is not None and images.shape[0] % 2 == 0:  # timm's Mixup needs an even batch
            return self.mixup(images, labels)
        return images, labels

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:
            return self.soft(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


def clip_gradients(params: list[nn.Parameter], max_norm: float | None) -> None:
    if max_norm:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)


def check_finite(named_params: list[tuple[str, nn.Parameter]], where: str) -> None:
    """After an update: every trainable weight must still be finite. A finite loss does not
    guarantee it (an overflowing backward pass, or a step too large for float32), and a NaN
    weight must fail here, before a checkpoint could store it over the last good one."""
    if not bool(torch.stack([p.detach().isfinite().all() for _, p in named_params]).all()):
        name = next(n for n, p in named_params if not bool(p.detach().isfinite().all()))
        raise DivergedError(f"{where}: the update made {name} non-finite; lower the learning rate")


# Steps between reads of the losses from the device when ``log_every`` is 0 (see StepChecks).
CHECK_EVERY = 25


class StepChecks:
    """A training loop's health checks without a host-device synchronisation every step.

    Reading a GPU tensor on the host (``bool(t)``, ``t.item()``) waits for all the work queued
    before it and leaves the GPU idle while the host queues the next. A finite-loss check before
    the backward pass, ``loss.item()`` for the log and a finiteness check of every weight after the
    update were three such reads a step: on an H200 they made a ViT-B supernet step 1.32x slower
    (benchmarks/RESULTS.md, GPU check). Here the losses stay on the device and are read together
    every ``every`` steps and whenever the caller is about to save, evaluate or log
    (:meth:`flush`): one read, then one check of the weights. A non-finite loss or weight still
    fails the run before any checkpoint can store it, and the error names the step whose loss
    went wrong first; what is lost is at most ``every`` steps of work that would be thrown away.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], every: int = 0):
        self.named = named_params
        self.every = every or CHECK_EVERY
        self.pending: list[torch.Tensor] = []
        self.where: list[str] = []
        self.steps = 0
        self.loss_sum = 0.0  # of the losses read so far
        self.count = 0

    def add(self, loss: torch.Tensor, where: str) -> None:
        """One loss (``where`` names its step for the error); no read from the device."""
        self.pending.append(loss.detach().float().reshape(()))
        self.where.append(where)

    def step_done(self) -> bool:
        """After the update; reads and checks every ``every`` steps. True when it did."""
        self.steps += 1
        if self.steps % self.every:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Read the pending losses (one synchronisation) and check them, then every weight."""
        if not self.pending:
            return
        values = torch.stack(self.pending).tolist()
        for value, where in zip(values, self.where):
            if not math.isfinite(value):
                raise DivergedError(f"{where}: the loss is {value} (not finite); lower the learning rate")
            self.loss_sum += value  # one at a time, in order: the same sum as a per-step .item() gave
        self.count += len(values)
        where = self.where[-1]
        self.pending.clear()
        self.where.clear()
        check_finite(self.named, where)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.count, 1)


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler: CosineLRScheduler,
                criterion: Criterion, cfg: TrainConfig, device: torch.device, step: int, desc: str,
                progress: bool | StageProgress = True, stats: dict[str, float] | None = None) -> tuple[float, int]:
    """One epoch of single-model training (pretrain, retrain, baselines): returns the mean loss
    and the global step count after the epoch. The supernet trains several subnets a step and
    has its own loop.

    ``progress``: a :class:`~unitune.progress.StageProgress` (the stage's one bar; the caller
    ends the epoch) or a bool (a bar for this epoch only). ``stats``, when given, receives
    ``train_acc``: the accuracy of the epoch's training batches against their true labels, taken
    as they were trained (under mixup, of the mixed images), a cheap signal of learning."""
    from unitune.progress import StageProgress

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    model.train()
    checks = StepChecks(named, cfg.log_every)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    bar = progress if isinstance(progress, StageProgress) else None
    batches = loader if bar is not None else tqdm(loader, desc=desc, leave=False, disable=not progress)
    for i, (images, labels) in enumerate(batches, start=1):
        labels = labels.to(device, non_blocking=True)
        images, target = criterion.prepare(images.to(device, non_blocking=True), labels)
        with autocast(device, cfg.amp):
            logits = model(images).float()
            loss = criterion(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        checks.add(loss, f"{desc} step {i}")
        clip_gradients(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        scheduler.step_update(step)
        read = checks.step_done()
        correct += (logits.detach().argmax(-1) == labels).sum()
        seen += labels.shape[0]
        if bar is not None:
            bar.step(labels.shape[0], checks.mean_loss if read else None)
    checks.flush()  # before the caller evaluates or saves anything
    if stats is not None:
        stats["train_acc"] = int(correct) / max(seen, 1)
    return checks.mean_loss, step


def all_reduce_gradients(params: list[nn.Parameter], world: Dist) -> None:
    """Average gradients over ranks. Every rank trains the same subnet in a step, so the set of
    parameters with a gradient is the same everywhere; the PEFT gradients are small enough to
    reduce in one flat buffer."""
    if not world.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def round_metric(value: float) -> float:
    """A reported accuracy: 6 decimal places, enough to tell 1 image in 100,000 apart, without
    float noise in the JSON a person reads."""
    return round(float(value), 6)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """What the logs report: the first group's rate over its ``lr_mult``
    (:func:`unitune.supernet.wrap.adamw`), the schedule's own rate between the warm-up and the
    decay's tail (where every group sits near the same absolute ``min_lr``, it is not); an
    optimizer restored from a checkpoint older than the key reports its first group's rate."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_mult", 1.0)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, num_classes: int,
             amp: bool = False) -> dict[str, Any]:
    """Top-1 accuracy, mean loss and the confusion matrix (rows: true class) over ``batches``."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, n = 0.0, 0
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, True) if amp else full_fp32():
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        pred = logits.argmax(-1)
        confusion += torch.bincount(labels.cpu() * num_classes + pred.cpu(), minlength=num_classes**2).view(
            num_classes, num_classes
        )
        n += labels.numel()
    model.train(was_training)
    correct = int(confusion.diag().sum())
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n, "confusion": confusion}


# ---- RNG state and checkpoints ------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch generator states as tensors and plain types, so that
    ``torch.load(weights_only=True)`` can read them back."""
    np_state = np.random.get_state()
    state = {
        "python": _python_rng_to_plain(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    # Only the current device's generator (the one this process draws from): the _all variant
    # would open a CUDA context on every visible GPU, in every rank.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_python_rng_from_plain(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        # Checkpoints written before one state per process held a list, one state per GPU.
        torch.cuda.set_rng_state(cuda[torch.cuda.current_device()] if isinstance(cuda, (list, tuple)) else cuda)


def _python_rng_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _python_rng_from_plain(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(state["internal"]), state["gauss"]


def save_checkpoint(folder: str | os.PathLike, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """``folder/weights.safetensors`` (what is trained) and ``folder/state.pt`` (optimiser,
    scheduler, sampler, RNG, progress; tensors and plain types only). The state is written last:
    its presence marks the pair complete, and it names the weights' checksum so a mixed pair
    (a crash between the two renames) is detected.

    Until the new state is published, the weights the old state names stay on disk as
    ``weights.prev.safetensors``, so a process killed between the two renames (a preempted job)
    still leaves a checkpoint :func:`load_checkpoint` can resume, not a mismatched pair."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current, prev = folder / "weights.safetensors", folder / PREV_WEIGHTS
    with atomic_path(current) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if current.exists():
            os.replace(current, prev)
    with atomic_path(folder / STATE_FILE) as tmp:
        torch.save({**state, "weights_sha256": digest}, tmp)
    prev.unlink(missing_ok=True)


STATE_FILE = "state.pt"  # a checkpoint folder's resume state
PREV_WEIGHTS = "weights.prev.safetensors"


def refuse_unasked_resume(ckpt_dir: Path, resume: bool) -> None:
    """A fresh start must not overwrite a checkpoint someone may want to continue."""
    if not resume and (Path(ckpt_dir) / STATE_FILE).exists():
        raise UniTuneError(f"{ckpt_dir}: a checkpoint exists; pass --resume to continue it or remove it to start over")


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The checkpoint in ``folder``, or ``None`` if there is none; a damaged one is a user error."""
    folder = Path(folder)
    state_path = folder / STATE_FILE
    if not state_path.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol before failing on it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a deep torch traceback
        raise UniTuneError(f"{state_path}: damaged checkpoint ({type(e).__name__}); delete it to start over") from None
    # The state's weights are weights.safetensors, or weights.prev.safetensors when the process
    # stopped after publishing new weights but before publishing their state (see save_checkpoint).
    candidates = [folder / "weights.safetensors", folder / PREV_WEIGHTS]
    weights_path = next((p for p in candidates if p.exists()
                         and hashlib.sha256(p.read_bytes()).hexdigest() == state.get("weights_sha256")), None)
    if weights_path is None:
        raise UniTuneError(f"{candidates[0]}: missing or does not match {state_path.name}; delete the folder to start over")
    try:
        weights = load_file(str(weights_path))
    except Exception as e:
        raise UniTuneError(f"{weights_path}: damaged checkpoint ({type(e).__name__})") from None
    return weights, state


