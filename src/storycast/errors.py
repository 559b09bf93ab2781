"""Exception types. Every message names the input at fault and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class StorycastError(Exception):
    """Base class: the CLI prints these as one clean message, without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file.

    Attributes:
        field: Path of the field inside the file, e.g. ``frames[3].characters[0]`` ('' for the file).
        message: What is wrong.
        fix: What to do about it.
    """

    field: str
    message: str
    fix: str = ""

    def format(self, source: str | Path | None = None) -> str:
        where = f"{source}: " if source else ""
        where += f"{self.field}: " if self.field else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{where}{self.message}.{fix}" if not self.message.endswith(".") else f"{where}{self.message}{fix}"


class StoryError(StorycastError):
    """A story file (or story object) is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem], source: str | Path | None = None):
        self.problems = list(problems)
        self.source = str(source) if source is not None else None
        lines = [p.format(self.source) for p in self.problems]
        header = f"{len(lines)} problem(s) in {self.source or 'the story'}:"
        super().__init__(lines[0] if len(lines) == 1 else "\n  ".join([header, *lines]))


class SettingsError(StorycastError):
    """A settings value (from a story file, the CLI or code) is invalid."""


class MissingWeightsError(StorycastError):
    """Model weights are not on disk and could not be downloaded."""


class ModelLoadError(StorycastError):
    """Weights were found but could not be loaded as the requested model."""


class ExtraNotInstalledError(StorycastError, ImportError):
    """An optional dependency is missing; the message names the pip extra that brings it."""


class UnknownMethodError(StorycastError, KeyError):
    """No method is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class RunFolderError(StorycastError):
    """The output folder holds a different run, or cannot be written."""


class ExportError(StorycastError):
    """A run folder cannot be exported as asked: not a run, frames missing, or an output that cannot be written."""
