"""Errors a user can cause and fix.

Every exception derived from :class:`ReprotrainError` carries a message written for the
person at the terminal: what is wrong, the offending value, and what to do. Stage entry
points catch these and print one line instead of a traceback (see ``reprotrain.cli``).
"""

from __future__ import annotations


class ReprotrainError(Exception):
    """Base class: a problem the user can fix; its message says how."""


class ConfigError(ReprotrainError):
    """``params.yaml`` is missing, malformed, or holds a bad value."""


class DataError(ReprotrainError):
    """The input data cannot be turned into a usable dataset."""


class ModelError(ReprotrainError):
    """A model or its weights cannot be built, found or loaded."""


class TrackingError(ReprotrainError):
    """The MLflow store or server cannot be used."""
