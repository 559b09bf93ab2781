"""The interface every story method implements.

A run asks the method three things, in order:

1. ``plan(story)``: how frames are grouped. Frames in one group are drawn by one ``generate`` call
   (jointly, for methods that share attention across frames; as one batch for the others). The
   runner resumes and skips at group granularity.
2. ``prepare(story, context)``: once per run, before the first group that needs drawing: per-story
   or per-character work such as identity discovery or loading trained weights.
3. ``generate(story, group, context)``: draw the frames of one group.

The story given to a method has fully resolved settings: ``story.settings`` holds the width,
height, steps and guidance to use, and ``story.prompt(i)``, ``story.negative_prompt(i)`` and
``story.frame_seed(i)`` give each frame's inputs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from storycast.methods.settings import MethodSettings

if TYPE_CHECKING:
    from PIL import Image

    from storycast.models.loading import LoadedModels
    from storycast.story.model import Story


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of one stage of work (``frames``, ``denoise``, ``discovery``...).

    ``completed`` counts finished units out of ``total``; a stage starts with ``completed == 0``.
    """

    stage: str
    completed: int
    total: int
    description: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default progress callback: ignore."""


@dataclass
class FrameResult:
    """One drawn frame.

    Attributes:
        index: Frame index in the story.
        image: The illustration.
        seed: The seed it was drawn with.
        metadata: JSON-able facts about how it was drawn (stored in the manifest).
        extras: Named side images (masks, previews) saved next to the frame as ``<frame>_<name>.png``.
    """

    index: int
    image: Image.Image
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Image.Image] = field(default_factory=dict)


@dataclass
class RunContext:
    """What the runner gives a method besides the story and the models.

    Attributes:
        progress: Callback for progress events.
        run_dir: The run's output folder (methods may write artefacts under it).
        cache_dir: storycast's cache folder (identity library, downloaded auxiliaries).
    """

    progress: ProgressCallback = no_progress
    run_dir: Path | None = None
    cache_dir: Path | None = None


class StoryMethod(abc.ABC):
    """Base class of story methods. Subclasses set ``name`` and ``settings_class``."""

    name: ClassVar[str]
    settings_class: ClassVar[type[MethodSettings]] = MethodSettings
    families: ClassVar[tuple[str, ...]] = ("sdxl", "sd15")
    """Model families the method runs on."""
    summary: ClassVar[str] = ""
    """One line for ``storycast methods``."""

    def __init__(self, models: LoadedModels, settings: MethodSettings | None = None):
        if models.family not in self.families:
            from storycast.errors import SettingsError

            raise SettingsError(
                f"method '{self.name}' runs on {' or '.join(self.families)} models, but the loaded model is "
                f"{models.family}. Fix: pick a matching --preset/--model."
            )
        self.models = models
        self.settings = settings if settings is not None else self.settings_class()

    def generation_defaults(self) -> dict[str, Any]:
        """Generation settings this method prefers over the model's defaults (e.g. its paper's steps)."""
        return {}

    def default_negative_prompt(self) -> str | None:
        """Negative prompt used when neither the story nor the command line sets one."""
        return None

    def plan(self, story: Story) -> list[tuple[int, ...]]:
        """Group frames for drawing: by default consecutive batches of ``settings.batch_size``."""
        size = max(1, story.settings.batch_size)
        indices = list(range(len(story)))
        return [tuple(indices[i : i + size]) for i in range(0, len(indices), size)]

    def prepare(self, story: Story, context: RunContext) -> None:  # noqa: B027 - optional hook
        """Work done once per run before drawing (identity discovery, loading trained weights)."""

    @abc.abstractmethod
    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        """Draw the frames of ``group`` and return them in the same order."""
