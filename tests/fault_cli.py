"""Run ``unitune`` as ``python -m unitune`` does, with test hooks that make the process die (SIGKILL,
sent to itself: nothing runs after it, no ``finally``, no ``atexit``) at a chosen point.

Used by ``test_faults.py`` as the program of subprocesses. The hooks patch functions in this
process only; library code has no test switches.

- ``UNITUNE_TEST_DIE_AT=export-weights``: inside ``save_export``, right after ``model.safetensors``
  is written into the export's temporary folder (a half-written export exists on disk);
- ``UNITUNE_TEST_DIE_AT=export-swap``: inside ``atomic_folder``, right after the previous export was
  moved aside and before the new one is moved in (no export under its name at that instant);
- ``UNITUNE_TEST_STEP_DELAY=<seconds>``: sleep that long in every retrain step, so that a test can
  kill the process mid-training with time to spare however loaded the machine is. It changes
  nothing that is computed.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    where = os.environ.get("UNITUNE_TEST_DIE_AT")
    if where == "export-weights":
        import safetensors.torch

        import unitune.retrain.export  # noqa: F401  (uses safetensors.torch.save_file through the module)

        real_save = safetensors.torch.save_file

        def save_then_die(tensors, filename, *args, **kwargs):
            real_save(tensors, filename, *args, **kwargs)
            if os.path.basename(str(filename)) == "model.safetensors":
                die()

        safetensors.torch.save_file = save_then_die
    elif where == "export-swap":
        real_replace = os.replace

        def replace_then_die(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if os.path.basename(str(src)) == "export" and str(dst).endswith(".old"):
                die()

        os.replace = replace_then_die
    elif where:
        raise SystemExit(f"fault_cli: unknown UNITUNE_TEST_DIE_AT={where!r}")

    delay = float(os.environ.get("UNITUNE_TEST_STEP_DELAY", "0"))
    if delay:
        import unitune.engine.train as train  # retrain's epochs run unitune.engine.train.train_epoch

        real_step_done = train.StepChecks.step_done

        def slow_step_done(self):  # called once a step, after the update
            time.sleep(delay)
            return real_step_done(self)

        train.StepChecks.step_done = slow_step_done

    from unitune.commands.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
