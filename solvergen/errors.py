"""The one error type users see from the compiler."""


class SpecError(ValueError):
    """A problem or spec file that solvergen refuses.

    The message is a single line that names the problem; the command-line tool prints it
    without a traceback and exits non-zero.
    """
