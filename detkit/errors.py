"""The errors a user can fix, all in one place.

Every error whose message names the thing to fix derives from :class:`DetkitError`, so a tool needs
one ``except`` (``detkit.utils.cli.user_errors``) to turn it into one clear line instead of a
traceback. There is one class per kind of thing the user fixes; each message names the file, key,
image or option and what would be valid. Anything else that escapes is a bug.

This module imports nothing, so every layer can raise these.
"""


class DetkitError(Exception):
    """A user-facing error: its message says what to fix."""


class ConfigError(DetkitError, ValueError):
    """A config file, dict, override or command-line option detkit cannot accept (including a device
    that does not exist here); the message names the key, where it came from and the valid values."""


class DataError(DetkitError, ValueError, OSError):
    """A dataset, annotation, image or video source is missing or malformed; the message names the
    file and the image id. (Also an ``OSError``: an unreadable file is one.)"""


class CheckpointError(DetkitError, ValueError):
    """A checkpoint or weights file is missing, unreadable or does not fit the model; the message
    names the file and what it holds."""


class BackendError(DetkitError, ValueError):
    """An export or inference backend cannot run what was asked (unknown name, missing package, an
    option its graph lacks); the message names the option and what to set instead."""


class WriteError(DetkitError, OSError):
    """A file or folder cannot be written (or is another run's): the message names the path and the
    system's reason. Also an ``OSError`` with the original ``errno``."""


class TrainingError(DetkitError, RuntimeError):
    """Training cannot go on: a loss or gradient became non-finite, or another rank failed (the
    message carries that rank's error)."""
