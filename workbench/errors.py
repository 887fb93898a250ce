"""The one error type a user can cause.

Every error that comes from bad input (a missing file, an unknown model, a wrong dimension, an empty
dataset) is a :class:`WorkbenchError` with a message that says what was wrong and what to do. The GUI
shows it with ``st.error``, the CLI prints it on one line and exits non-zero. A traceback is for bugs.
"""


class WorkbenchError(Exception):
    """A problem the user can fix; the message says how."""


class TruncationWarning(UserWarning):
    """Texts were cut at ``max_length`` tokens during an extraction. An analysis run records its own line
    for this (naming the dataset), so it does not repeat the store's."""
