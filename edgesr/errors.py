"""Errors that edgesr reports to users as a message, not a traceback.

Anything a user can cause (a bad key, a corrupt file, a missing data package) raises an
:class:`EdgesrError` subclass with a message that names the key or file and the problem. The CLI
prints it and exits with status 2; programming errors keep their traceback.
"""

from __future__ import annotations


class EdgesrError(Exception):
    """Base class of user-facing errors."""


class ConfigError(EdgesrError, ValueError):
    """An unknown configuration key, or a value of the wrong type or range."""


class DataError(EdgesrError, ValueError):
    """Input data that cannot be used: corrupt, wrong shape, NaN/Inf, missing fields."""


class SourceUnavailableError(EdgesrError):
    """A real data source (a Debian or PyPI package) is not installed on this machine."""
