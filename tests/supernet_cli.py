"""Run ``unitune`` exactly as ``python -m unitune`` does, recording what each process did.

Used by ``test_supernet_train.py`` as the program of subprocesses (plain and under ``torchrun``).
With ``UNITUNE_TEST_RECORD=<prefix>`` set, each process writes ``<prefix>.<rank>.json`` at exit:

- ``subnets``: every subnet the supernet sampler handed to the trainer, in order;
- ``writes``: every file this process created, opened for writing, renamed or removed below
  ``UNITUNE_TEST_WATCH`` (seen through Python's audit hooks, so it covers every write path that
  goes through Python: ``open``, ``tempfile``, ``os.replace``, ``unlink``; safetensors writes into a
  temporary file that ``atomic_path`` created and renames, both of which are seen).

Nothing here changes what the trainer computes: the sampler is wrapped, not replaced.
"""

from __future__ import annotations

import atexit
import json
import os
import sys


def main() -> int:
    record = os.environ.get("UNITUNE_TEST_RECORD")
    if not record:
        from unitune.commands.cli import main as cli_main

        return cli_main(sys.argv[1:])

    watch = os.path.realpath(os.environ["UNITUNE_TEST_WATCH"])
    writes: list[list[str]] = []
    subnets: list[dict] = []

    def under_watch(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(watch + os.sep)
        except (TypeError, ValueError):
            return False  # a file descriptor, not a path

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args[0] is not None and under_watch(args[0]):
            mode, flags = args[1], args[2]
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing:
                writes.append([event, os.fsdecode(args[0])])
        elif event == "os.rename" and (under_watch(args[0]) or under_watch(args[1])):
            writes.append([event, os.fsdecode(args[0]), os.fsdecode(args[1])])
        elif event in ("os.remove", "os.mkdir", "os.rmdir") and under_watch(args[0]):
            writes.append([event, os.fsdecode(args[0])])

    sys.addaudithook(hook)

    import unitune.engine.supernet_train as trainer

    class RecordingSampler(trainer.SubnetSampler):
        def __call__(self):
            drawn = super().__call__()
            subnets.extend(s.to_dict()["subnet"] for s in drawn)
            return drawn

    trainer.SubnetSampler = RecordingSampler

    def dump() -> None:
        rank = os.environ.get("RANK", "0")
        with open(f"{record}.{rank}.json", "w") as f:
            json.dump({"subnets": subnets, "writes": writes}, f)

    atexit.register(dump)
    from unitune.commands.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
