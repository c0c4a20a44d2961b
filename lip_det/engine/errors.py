"""SetupError: a mistake the user has to fix, reported in one line without a traceback."""

__all__ = ["SetupError"]


class SetupError(Exception):
    """A problem with the command line, config, weights or data that the user has to fix. Tools
    print its message without a traceback: the traceback would only show where it was found."""
