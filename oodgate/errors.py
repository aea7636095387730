"""Errors that users of oodgate can act on."""

from __future__ import annotations


class OodgateError(ValueError):
    """Bad input or state: the message says what was wrong and what to do."""


class NotFittedError(OodgateError):
    """A detector or calibration was used before it was fitted."""


class ArtifactError(OodgateError):
    """A calibration file or graph is missing, of another version, tampered with or not made by oodgate."""
