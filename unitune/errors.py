"""The one error type for user mistakes.

Anything a user can fix (a typo in a config, a missing file, a size outside the search space)
raises :class:`UniTuneError` with a single line that names the file, key or value and what was
expected. The CLI prints it without a traceback and exits with status 2; every other exception
is an internal failure and keeps its traceback.
"""


class UniTuneError(Exception):
    """A user mistake, reported as one line (``unitune: error: <message>``), exit status 2."""

    exit_code = 2
