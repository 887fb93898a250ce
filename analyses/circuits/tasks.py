"""The prompt-pair tasks of circuit finding live in the core (:mod:`workbench.tasks`), shared with the
attribution back-end; this module keeps the circuits package's names for them."""

from workbench.tasks import (DEFAULT_LAMBDA, TASKS, Task, encode, load_csv_task, make_docstring,  # noqa: F401
                             make_greater_than, make_induction, make_ioi, make_task, single_token)
