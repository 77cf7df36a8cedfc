"""The transfer table on the CPU protocol: single PEFT methods vs the searched subnet.

    python benchmarks/bench_transfer.py                     # the demo as configured, 3 seeds
    python benchmarks/bench_transfer.py --run runs/demo     # reuse a finished `unitune run` folder
    python benchmarks/bench_transfer.py --quick             # shorter training, 2 seeds

The protocol is the demo's (``configs/demo.yaml``): a tiny ViT pretrained once on digits 0-4
(every weight), adapted to the disjoint digits 5-9. Each method trains on ``trainval`` with the
demo's retrain recipe and is scored once on ``test`` after the last epoch. The searched subnet
is the demo search's ``best_subnet.yaml`` (searched on train/val with the supernet's inherited
weights; the test split is not used before this table).

Rows (all through ``unitune.retrain.train.retrain``: hand-written subnet files, and full
fine-tuning as its full mode, ``unitune.commands.compare.full_finetune``, same recipe):

- linear probe: the all-zero subnet (only the head trains);
- full fine-tuning: every parameter of the backbone and the head;
- LoRA / Adapter / VPT / SSF only: the same size in every block, the size (from the search space)
  whose analytic parameter count is closest to the searched subnet's;
- searched subnet: retrained from fresh PEFT weights (``init: pretrained``, the demo's default),
  and, for reference, from the supernet's inherited weights (``--init supernet``).

Mean and sample standard deviation over seeds (``retrain.seed``: PEFT/head init, data order).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import add_common_args, default_workdir, demo_overrides, demo_run, demo_search, mean_std, setup
from unitune.engine.backbone import create_backbone
from unitune.engine.config import load_run_config
from unitune.commands.compare import full_finetune  # the same loop as `unitune compare`'s full fine-tuning rows
from unitune.engine.context import PRETRAIN_DIR, SUPERNET_FILE
from unitune.retrain.train import retrain
from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params

SINGLE = ("lora", "adapter", "vpt", "ssf")


def closest_uniform(method: str, target: int, space: SearchSpace, dims: BackboneDims) -> tuple[Subnet, int]:
    """The one-method, same-size-everywhere subnet whose count is closest to ``target``."""
    depth = dims.depth
    options = []
    for size in space.choices(method):
        if size == 0:
            continue
        globals_ = space.choices("ssf_global") if method == "ssf" else (0,)
        for g in globals_:
            subnet = Subnet.uniform(depth, **{method: size}, ssf_global=g)
            options.append((abs(count_params(subnet, dims, space).total - target), subnet))
    _, best = min(options, key=lambda o: o[0])
    return best, count_params(best, dims, space).total


def link_pretrain(src: Path, dst: Path) -> None:
    """retrain reads the pretrained backbone from ``<out>/pretrain``: point it at the shared one."""
    dst.mkdir(parents=True, exist_ok=True)
    link = dst / PRETRAIN_DIR
    if not link.exists():
        os.symlink((src / PRETRAIN_DIR).resolve(), link)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, backbone=False)
    ap.add_argument("--run", default=None, help="a demo run folder (pretrain/, supernet.safetensors, "
                                                "best_subnet.yaml); default: made in the work dir when missing")
    ap.add_argument("--workdir", default=None, help="cache of trained runs (default: $TMPDIR/unitune-bench)")
    ap.add_argument("--seeds", type=int, default=None, help="default 3 (quick 2)")
    ap.add_argument("--epochs", type=int, default=None, help="retrain epochs (default: the config's; quick 10)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of rows (linear,full,lora,adapter,vpt,"
                                                    "ssf,searched,searched-supernet-init)")
    args = ap.parse_args(argv)
    setup(args)
    workdir = Path(args.workdir) if args.workdir else default_workdir()
    base = Path(args.run) if args.run else workdir / ("demo-quick" if args.quick else "demo")
    overrides = demo_overrides(args.quick) + [f"device={args.device}"]
    run, base = demo_run(base, overrides)
    best_path = demo_search(run, base)
    searched = Subnet.load(best_path)
    epochs = args.epochs or (10 if args.quick else run.retrain.epochs)
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    warmup = run.retrain.warmup_epochs

    space = SearchSpace.from_dict(run.space)
    probe = create_backbone(run.model.backbone, 5, kwargs=run.model.kwargs, meta=True)
    dims = BackboneDims.from_model(probe)
    target = count_params(searched, dims, space).total
    rows: dict[str, tuple[Subnet | None, str]] = {"linear probe": (Subnet.uniform(dims.depth), "pretrained"),
                                                  "full fine-tuning": (None, "")}
    for m in SINGLE:
        subnet, _ = closest_uniform(m, target, space, dims)
        rows[f"{m} only"] = (subnet, "pretrained")
    rows["searched"] = (searched, "pretrained")
    rows["searched (supernet init)"] = (searched, "supernet")
    keys = {"linear": "linear probe", "full": "full fine-tuning", **{m: f"{m} only" for m in SINGLE},
            "searched": "searched", "searched-supernet-init": "searched (supernet init)"}
    if args.methods:
        rows = {keys[k.strip()]: rows[keys[k.strip()]] for k in args.methods.split(",")}

    tag = f"e{epochs}"
    results: dict[str, dict] = {}
    started = time.perf_counter()
    print(f"\ntransfer on {run.data.source} {list(run.data.classes)} from a backbone pretrained on "
          f"{list(run.pretrain_data.classes)}; searched subnet {best_path} ({target:,} PEFT params, budget "
          f"{run.search.budget}); {epochs} epochs, lr {run.retrain.lr}, seeds {seeds}")
    for label, (subnet, init) in rows.items():
        accs, info = [], {}
        for seed in seeds:
            seeded = load_run_config(run.source, overrides + [f"retrain.seed={seed}", f"retrain.epochs={epochs}",
                                                              f"retrain.warmup_epochs={min(warmup, epochs)}"])
            out = base / "transfer" / tag / label.replace(" ", "_").replace("(", "").replace(")", "") / f"seed{seed}"
            link_pretrain(base, out)
            if subnet is None:
                r = full_finetune(seeded, out)
                info = {"params": r["params"], "params_with_head": r["params_with_head"], "sizes": "all weights"}
            else:
                path = subnet.save(out / "subnet.yaml")
                # A finished earlier run of the same row resumes at its last epoch: scored, not retrained.
                r = retrain(seeded, path, out, init=init, supernet_file=base / SUPERNET_FILE, progress=False,
                            resume=(out / "retrain_ckpt" / "state.pt").exists())
                info = {"params": r["params"]["trainable_params"], "params_with_head": r["params"]["trainable_params_with_head"],
                        "sizes": describe(subnet)}
            accs.append(r["test_accuracy"])
        mean, std = mean_std(accs)
        results[label] = {**info, "accs": accs, "mean": mean, "std": std}
        print(f"  {label:<26} {info['params']:>9,} params  test acc {100 * mean:.2f} ± {100 * std:.2f}  "
              f"({' '.join(f'{100 * a:.1f}' for a in accs)})  [{time.perf_counter() - started:.0f} s]", flush=True)

    print(f"\n{'method':<26} {'sizes':<52} {'PEFT params':>11} {'with head':>10} {'test acc % (mean ± std)':>24}")
    for label, r in results.items():
        print(f"{label:<26} {r['sizes']:<52} {r['params']:>11,} {r['params_with_head']:>10,} "
              f"{100 * r['mean']:>15.2f} ± {100 * r['std']:.2f}")
    singles = {k: v for k, v in results.items() if k.endswith(" only")}
    if "searched" in results and singles:
        best_label, best = max(singles.items(), key=lambda kv: kv[1]["mean"])
        s = results["searched"]
        diff = s["mean"] - best["mean"]
        noise = max(s["std"], best["std"])
        verdict = "beats" if diff > noise else ("matches (within one std)" if diff >= -noise else "trails")
        print(f"\nsearched subnet {100 * s['mean']:.2f} vs best single method ({best_label}) {100 * best['mean']:.2f}: "
              f"{verdict}; difference {100 * diff:+.2f} points, larger std {100 * noise:.2f}")
    return results


def describe(subnet: Subnet) -> str:
    parts = []
    for m in SINGLE:
        sizes = subnet.sizes(m)
        if any(sizes):
            parts.append(f"{m} {','.join(map(str, sizes))}")
    if subnet.ssf_global:
        parts.append("ssf_global")
    return "; ".join(parts) or "head only"


if __name__ == "__main__":
    main()
