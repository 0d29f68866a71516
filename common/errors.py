"""The project's errors. Each stage's command line turns a ProjectError into one line, `<stage>: <message>`,
so a message must say what is wrong and, where it can, how to put it right."""


class ProjectError(Exception):
    """An error the user can act on; anything else is a bug and keeps its traceback."""


class ConfigError(ProjectError, ValueError):
    """Settings that cannot work together, or a value out of range."""


class DatasetError(ProjectError, ValueError):
    """A dataset file that is missing, not in the original layout, or fails validation."""


class UnsafePickleError(DatasetError):
    """The dataset's pickle asks for what the format never holds: a global outside the allow-list (it could run
    code), a forged dtype, an object array or scalar made from raw bytes (pointers), or a structure that would
    expand without bound."""


class CheckpointError(ProjectError):
    """A checkpoint file that is missing, truncated, not one of ours, or written by another stage."""


class RunError(ProjectError):
    """A run directory that cannot be used as asked; the message says how to make a usable one."""


class TrainingDiverged(ProjectError):
    """The loss became NaN or infinite; the last checkpoint written before it is kept."""
