"""``unitune compare``: the VTAB-style table of every method on many tasks and seeds.

For each task and seed, with one and the same retrain recipe (the config's ``retrain:``), each
trained on ``trainval`` and scored once on ``test`` after its last epoch:

- ``linear``: the linear probe (only the head trains);
- any registered PEFT method (``lora``, ``adapter``, ``vpt``, ``ssf``, ``bitfit``, ``dora``,
  ``vera``, ...: the registry in ``unitune.supernet.methods``): that method alone at the same size
  in every block, the largest size of the search space whose count fits the run's budget
  (``search.budget``); its sizes come from ``space:`` (a method the space does not name has none:
  give it some, e.g. ``space.dora=[0,4,8]``);
- ``full``: full fine-tuning (every weight of the backbone and the head);
- ``search``: the searched subnet: supernet on train, search on val (``unitune run``'s stages;
  no supernet with ``search.fitness: standalone``), then retrained per seed. The supernet and
  search run once per task (seed ``supernet.seed`` / ``search.seed``); the seeds vary the
  retraining (PEFT and head init, data order), as for the other rows.

A ``pretrain:`` section pretrains the backbone once into ``OUT/pretrain/`` and every task starts
from it. The run folder holds one JSON file per finished cell (``cells/<task>/<method>-seed<k>.json``,
written atomically): a rerun skips those and resumes an interrupted retrain from its checkpoint.
Outputs: ``results.csv`` (one row per task x method x seed), ``table.md`` (mean +- std over seeds
per task, the group means and the mean of the group means, as VTAB papers report) and
``accuracy_vs_params.png``.

The ``compare:`` section of a config (optional; ``configs/vtab/*.yaml`` have none and compare
``data.task``, or the tasks given with ``--tasks``)::

    compare:
      tasks: [count, location, digits]        # values of data.task
      groups: {natural: [digits], structured: [count, location]}
      seeds: [0, 1, 2]
      methods: [linear, lora, adapter, vpt, ssf, full, search]
      quick:                                  # what --quick changes: a run of minutes
        overrides: {retrain.epochs: 1, data.split_sizes: [40, 20, 40]}

The package: :mod:`.plan` (the plan, the cell record and the checks made before any work),
:mod:`.run` (pretraining, search and cells, in worker processes with ``--jobs``) and
:mod:`.report` (the cells as a pandas DataFrame; CSV, table and figure). Its public names are
re-exported here.
"""

from .plan import (CELL_KEYS, CSV_COLUMNS, CSV_FILE, GROUP_ORDER, META_FILE, METHODS, PLOT_FILE, PRETRAIN_RESULT,
                   SEARCH_RESULT, SPECIAL, TABLE_FILE, VTAB_GROUPS, CellRecord, Plan,
                   known_rows, method_rows, parse_names, parse_seeds, plan_compare)
from .report import (MARKERS, QUICK_NOTE, accuracy_figure, describe, format_notes, format_paired,
                     format_table, head_sizes, paired_vs_single, results_csv, results_frame, save_plot, search_trust,
                     stamp_quick, summarise, write_report)
from .run import full_finetune, largest_uniform, run_cell, run_compare

__all__ = ["CELL_KEYS", "CSV_COLUMNS", "CSV_FILE", "GROUP_ORDER", "META_FILE", "METHODS", "PLOT_FILE",
           "PRETRAIN_RESULT", "SEARCH_RESULT", "SPECIAL", "TABLE_FILE", "VTAB_GROUPS",
           "CellRecord", "Plan", "known_rows", "method_rows", "parse_names", "parse_seeds", "plan_compare", "MARKERS",
           "QUICK_NOTE", "accuracy_figure", "describe", "format_notes", "format_paired", "format_table",
           "head_sizes", "paired_vs_single", "results_csv", "results_frame", "save_plot", "search_trust",
           "stamp_quick", "summarise", "write_report", "full_finetune", "largest_uniform", "run_cell", "run_compare"]
