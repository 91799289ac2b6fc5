"""Project exceptions: each message names the input, the field and the fix."""

from __future__ import annotations


class CustopsError(Exception):
    """Base class for every error custops raises on purpose (the CLI prints it as one line)."""


class ConfigError(CustopsError):
    """A setting is missing or invalid."""


class DataContractError(CustopsError):
    """An input file breaks the data contract as a whole (missing column, wrong type, unreadable)."""

    def __init__(self, source: str, column: str | None, problem: str, fix: str | None = None):
        self.source = source
        self.column = column
        self.problem = problem
        where = f"{source}" + (f", column '{column}'" if column else "")
        msg = f"{where}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class StoreError(CustopsError):
    """The offline or online store is missing, incomplete or inconsistent."""


class GateError(CustopsError):
    """A promotion was refused by the quality gate."""


class DriftDetected(CustopsError):
    """Monitoring found data drift or model decay beyond the thresholds (CLI exit code 6)."""

    def __init__(self, message: str, summary_path: str | None = None):
        self.summary_path = summary_path
        super().__init__(message)
