"""The project's input-error classes, in one place.

Every error a user's input can cause (a config field, a data file, a mesh, a
checkpoint of another run, an inference request, a study definition) is an
`InputError`: the command lines print its one-line message as `error: ...`
and exit with status 2, before anything compiles and without touching what
is already saved. Errors of the run itself (a non-finite loss, preemption)
live with the code that raises them.
"""


class InputError(ValueError):
    """Bad user input; the message is one line naming the field or path and the value."""


class ConfigError(InputError):
    """An invalid config field; the message names the field and its value."""


class DataError(InputError):
    """Data cannot be loaded: missing, empty or undecodable input."""


class MeshError(InputError):
    """The configured mesh cannot be laid over the available devices."""


class CheckpointMismatchError(InputError):
    """The workdir holds a checkpoint of a different run (another config)."""


class InferenceError(InputError):
    """Bad inference input (prompt too long, bad pool or block size)."""


class StudyError(InputError):
    """A bad study definition or invocation."""


class ReportError(InputError):
    """A results file a report cannot be made from."""
