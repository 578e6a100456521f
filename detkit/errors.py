"""The one base class of the errors a user can fix.

Every error whose message names the thing to fix (a config key, a dataset file, a checkpoint, an
output folder, an export setting, a video source) derives from :class:`DetkitError`, so a tool needs
one ``except`` (see ``detkit.utils.cli.user_errors``) to turn them into one clear line instead of a
traceback. Each subclass also keeps the builtin base it had before (``ConfigError`` is still a
``ValueError``, ``ImageReadError`` an ``OSError``...), so existing ``except ValueError`` code works.

This module imports nothing, so every layer (config, data, utils, ...) can use it.
"""


class DetkitError(Exception):
    """A user-facing error: its message says what to fix. Anything else is a bug."""
