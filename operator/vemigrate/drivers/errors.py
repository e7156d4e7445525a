"""Errors drivers raise, classified so the phase machine knows whether to retry, give up or wait."""

from __future__ import annotations

from vemigrate.api.reasons import Reason
from vemigrate.core.observation import ErrorClass


class DriverError(Exception):
    """A host operation failed. `reason` says which way, for status, Events and metrics."""

    error_class = ErrorClass.PERMANENT

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RetryableError(DriverError):
    """Another attempt may pass: a timeout, a dropped connection, a busy host."""

    error_class = ErrorClass.RETRYABLE


class PermanentError(DriverError):
    """It will fail the same way again: bad credentials, an unsupported request, a missing VE."""

    error_class = ErrorClass.PERMANENT


class StateUnknownError(DriverError):
    """The host did not answer in time: what happened there is unknown. Wait and observe."""

    error_class = ErrorClass.UNKNOWN_STATE
