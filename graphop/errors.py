"""Exception types shown to command-line users as one-line messages (exit code 2)."""
from __future__ import annotations

__all__ = ["GraphopError", "InputError", "InputTypeError", "MeshError", "MeshReadError",
           "ConfigError", "DataError", "MemoryLimitError", "GraphopWarning", "MeshWarning"]


class GraphopError(Exception):
    """Base class of errors that are the user's input, not a bug: the CLI prints the message
    on one line and exits with code 2 (``--debug`` shows the traceback)."""


class InputError(GraphopError, ValueError):
    """An invalid argument or input of a graphop function or layer: a wrong shape, a value out
    of range, an unknown option (a ``ValueError`` too, as Python code expects)."""


class InputTypeError(GraphopError, TypeError):
    """An argument of the wrong type (a ``TypeError`` too)."""


class MeshError(GraphopError, ValueError):
    """Invalid mesh content (bad coordinates, bad connectivity, wrong field length, ...)."""


class MeshReadError(GraphopError, ValueError):
    """A mesh file that cannot be read: unknown extension, unreadable or truncated content."""


class ConfigError(GraphopError, ValueError):
    """An invalid configuration: unknown keys, wrong types, missing required values."""


class DataError(GraphopError, ValueError):
    """A dataset problem: missing or empty data, missing fields, NaN values, mixed dimensions."""


class MemoryLimitError(GraphopError):
    """A request that would need more memory than the machine (or the process limit) has,
    refused before allocating: the message says how much it needs and how much is available."""


class GraphopWarning(UserWarning):
    """Base class of warnings about the user's input that do not stop the work: the CLI prints
    each as one line ``graphop: warning: ...``."""


class MeshWarning(GraphopWarning):
    """A usable mesh with a defect worth knowing (zero-measure cells, ...)."""
