"""The one error type a user can cause (and the one warning the store raises about the input: truncation).

Every error that comes from bad input (a missing file, an unknown model, a wrong dimension, an empty
dataset) is a :class:`WorkbenchError` with a message that says what was wrong and what to do. The GUI
shows it with ``st.error``, the CLI prints it on one line and exits non-zero. A traceback is for bugs.
"""


class WorkbenchError(Exception):
    """A problem the user can fix; the message says how."""


class TruncationWarning(UserWarning):
    """Texts were cut at ``max_length`` tokens during an extraction. An analysis run records its own line
    for this (naming the dataset), so it does not repeat the store's."""


def truncation_message(n_truncated: int, n_texts: int, max_length: int, model_max: int, of: str = "",
                       option: str = "max_length") -> str:
    """The one wording of "texts were cut", with the fix when there is one: raise ``option`` (the name
    the caller's interface uses) up to the model's limit, or nothing to raise when already there."""
    fix = (f"raise {option}, up to the model's {model_max}" if max_length < model_max
           else "the model's limit; split longer texts to keep their ends")
    return (f"{n_truncated} of {n_texts} texts{f' of {of}' if of else ''} were longer than {max_length} tokens "
            f"and were truncated ({fix}).")
