"""check_choice: one error message, with a did-you-mean, for a value that is not one of a list."""

import difflib

__all__ = ["check_choice"]


def check_choice(value, valid, key):
    """Raise ValueError naming ``key``, ``value`` and the valid choices if value is not valid."""
    if value not in valid:
        message = f"{key} = {value!r} is not valid; choose one of {list(valid)}"
        close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
        raise ValueError(message + (f"; did you mean {close[0]!r}?" if close else ""))
