"""Errors caused by what a user sent or by their files, as opposed to bugs.

`UserError` is a marker base: an exception that also derives from it carries a message
that is the whole story ("steps: must be between 1 and 150", "the mask is empty", "no
such checkpoint"). Logs give such an error one line; a traceback is kept for bugs.

Standard library only: every layer may import it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable file; the message says what and where."""
