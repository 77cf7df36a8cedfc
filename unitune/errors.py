"""The one error type for user mistakes.

Anything a user can fix (a typo in a config, a missing file, a size outside the search space)
raises :class:`UniTuneError` with a single line that names the file, key or value and what was
expected. The CLI prints it without a traceback and exits with status 2; every other exception
is an internal failure and keeps its traceback.
"""


class UniTuneError(Exception):
    """A user mistake, reported as one line (``unitune: error: <message>``), exit status 2."""

    exit_code = 2


class DivergedError(UniTuneError):
    """Training diverged: a non-finite loss or weight (the learning rate too high, most often).
    Its own type so that a tuner can count the trial as failed and go on."""


class UniTuneWarning(UserWarning):
    """Something a user may want to change but that does not stop the run (a budget every subnet
    fits). A real warning for library users (``warnings.warn``, filters, ``pytest.warns``); the
    CLI prints it as one line, ``unitune: warning: ...`` (unitune/voice.py)."""
