"""The ``unitune`` command line.

User mistakes (:class:`UniTuneError`) print one line, ``unitune: error: ...``, and exit 2;
``--debug`` shows the traceback. Stage code is imported lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .errors import UniTuneError


def _inspect(args: argparse.Namespace) -> int:
    from unitune.backbone import create_backbone
    from unitune.io import read_yaml
    from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params
    from unitune.supernet.space import METHODS

    subnet = Subnet.load(args.subnet)
    name = args.backbone or subnet.backbone
    if not name:
        raise UniTuneError(f"{args.subnet}: names no backbone; give --backbone NAME")
    space = None
    if args.space:
        data = read_yaml(args.space)
        section = data.get("space") if isinstance(data, dict) and "space" in data else data
        space = SearchSpace.from_dict(section, source=f"{args.space}: space")
    num_classes = _default_classes(name) if args.num_classes is None else args.num_classes
    if num_classes < 0:
        raise UniTuneError(f"--num-classes: expected a non-negative integer, got {num_classes}")
    vit = create_backbone(name, num_classes=num_classes, meta=True)
    dims = BackboneDims.from_model(vit)
    subnet.check(dims.depth, space, source=str(args.subnet))
    count = count_params(subnet, dims, space)
    if args.json:
        out = {"backbone": name, "num_classes": dims.num_classes, **count.to_dict(), "subnet": subnet.to_dict()["subnet"]}
        print(json.dumps(out, indent=2))
        return 0
    header = f"{'block':>5}  " + "  ".join(f"{m:>7}" for m in METHODS) + "  | " + "  ".join(f"{m + ' #':>9}" for m in METHODS) + f"  | {'total':>9}"
    print(f"{name}: {dims.depth} blocks, width {dims.dim}, {dims.num_classes} classes")
    print(header)
    print("-" * len(header))
    for i, block in enumerate(count.per_block):
        sizes = "  ".join(f"{subnet.sizes(m)[i]:>7}" for m in METHODS)
        params = "  ".join(f"{block[m]:>9,}" for m in METHODS)
        print(f"{i:>5}  {sizes}  | {params}  | {sum(block.values()):>9,}")
    print("-" * len(header))
    if count.ssf_global:
        print(f"global SSF (patch-embed + final norm): {count.ssf_global:,}")
    for m in METHODS:
        print(f"{m:<8} {count.per_method[m]:>12,}")
    print(f"{'trainable (PEFT, head excluded)':<34} {count.total:>12,}")
    print(f"{'head':<34} {count.head:>12,}")
    print(f"{'trainable with head':<34} {count.with_head:>12,}")
    return 0


def _load_run(args: argparse.Namespace):
    from unitune.config import load_run_config

    return load_run_config(args.config, args.overrides)


def _out_dir(args: argparse.Namespace, run) -> "Path":
    from pathlib import Path

    return Path(args.out) if args.out else Path("runs") / run.name


def _supernet(args: argparse.Namespace) -> int:
    from unitune.supernet.train import train_supernet

    run = _load_run(args)
    path = train_supernet(run, _out_dir(args, run), resume=args.resume, progress=not args.quiet)
    print(f"supernet: {path}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from unitune.pretrain import pretrain

    run = _load_run(args)
    pretrain(run, _out_dir(args, run), progress=not args.quiet)
    return 0


def _default_classes(name: str) -> int:
    import timm

    cfg = timm.get_pretrained_cfg(name)
    return int(getattr(cfg, "num_classes", None) or 1000) if cfg is not None else 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unitune",
        description="Search a per-layer mix of Adapter, LoRA, VPT and SSF for a timm ViT under a parameter budget.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="per-layer table and exact parameter counts of a subnet")
    p.add_argument("--backbone", help="timm model name (default: the subnet file's 'backbone')")
    p.add_argument("--subnet", required=True, help="subnet YAML file")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the model's)")
    p.add_argument("--space", help="YAML with a 'space' section to check the sizes against")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("pretrain", help="fully train the backbone on the config's source task (offline demo)")
    _run_args(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("supernet", help="train the weight-sharing supernet")
    _run_args(p)
    p.add_argument("--resume", action="store_true", help="continue from DIR/supernet_ckpt")
    p.set_defaults(func=_supernet)
    return parser


def _run_args(p: argparse.ArgumentParser) -> None:
    """What every stage command takes: the run config, the run folder, overrides."""
    p.add_argument("--config", required=True, help="run config YAML (see configs/)")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. supernet.epochs=3")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UniTuneError as e:
        if args.debug:
            raise
        print(f"unitune: error: {e}", file=sys.stderr)
        return UniTuneError.exit_code
    except KeyboardInterrupt:
        print("unitune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
