"""User errors: wrong input, configuration or files. A command reports one as one line and a
non-zero exit, without a traceback (:func:`exit_on_user_error`); anything else is a bug and keeps
its traceback."""
from __future__ import annotations

import functools
import sys


class UserError(ValueError):
    """Something the user can fix; the message names the file, line or field."""


def exit_on_user_error(main):
    """Wrap a command's entry point: a :class:`UserError` becomes ``error: <message>`` and exit 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapped
