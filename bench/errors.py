"""The one error tree. The CLI catches BenchError, prints `str(error)` on one line and exits with
`exit_code`; everything else is a bug and gets a traceback."""

from __future__ import annotations


class BenchError(Exception):
    """Base of every expected failure. `hint` is the next step for the user."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(BenchError):
    """A flag, alias or name the user gave is wrong."""


class ConfigError(BenchError):
    """A TOML file (scenario, device profile, model catalog) is malformed."""

    def __init__(self, path: str, message: str, line: int | None = None, hint: str | None = None):
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}", hint)
        self.path = str(path)
        self.line = line


class ModelError(BenchError):
    """A model file is missing, not GGUF, truncated, or fails its checksum."""


class PreflightError(BenchError):
    """A check before the run says it cannot give honest numbers (RAM, battery, heat)."""


class StoreError(BenchError):
    """A results file is corrupt, of a newer schema, or missing."""


class RunFailed(BenchError):
    """The run broke on the device or runtime after it started; partial results are kept."""

    exit_code = 3

    def __init__(self, message: str, run_dir: str | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.run_dir = run_dir
