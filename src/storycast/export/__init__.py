"""Export a run folder as a print or screen document: a storyboard grid, comic pages or a picture book, as PDF,
CBZ, HTML or PNG pages. See ``docs/export.md``; the entry point is :func:`storycast.export.export_run`."""

from __future__ import annotations

from storycast.export.api import FORMATS, export_run
from storycast.export.layouts import LAYOUTS
from storycast.export.settings import ExportSettings

__all__ = ["FORMATS", "LAYOUTS", "ExportSettings", "export_run"]
