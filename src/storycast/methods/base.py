"""The interface every story method implements.

Before any model is loaded, the run planner (:func:`storycast.runs.plan.plan_run`) asks the method's
class, with the story and the resolved settings:

1. ``check(story, settings)``: refuse a story the method cannot draw, with a message naming the field
   and the fix;
2. ``plan(story, settings)``: how frames are grouped. Frames in one :class:`FrameGroup` are drawn by one
   ``generate`` call (jointly, for methods that share attention across frames; as one batch for the
   others); a group may depend on earlier groups whose output it reads (identity frames, anchors). The
   runner resumes and skips at group granularity, and a group's key includes those of its dependencies.

Then, with the models loaded, the method instance is asked:

3. ``prepare(story, context)``: once per run, before the first group that needs drawing: per-story
   or per-character work such as identity discovery or loading trained weights;
4. ``generate(story, group, context)``: draw the frames of one group (groups come in plan order; a
   method rebuilds what a group reads from a dependency that is already drawn, and so not redrawn).

The story given to a method has fully resolved settings: ``story.settings`` holds the width,
height, steps and guidance to use, and ``story.prompt(i)``, ``story.negative_prompt(i)`` and
``story.frame_seed(i)`` give each frame's inputs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from storycast.settings import MethodSettings, ResolveContext

if TYPE_CHECKING:
    from PIL import Image

    from storycast.errors import StorycastError
    from storycast.methods.card import MethodAbout, MethodCard
    from storycast.methods.limits import FrameLimit
    from storycast.models.loading import LoadedModels
    from storycast.pipelines.families.base import Family
    from storycast.pipelines.sampler import Sampling
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


def denoise_progress(
    progress: ProgressCallback, description: str = "", *, offset: int = 0, total: int | None = None
) -> Callable[[int, int], None]:
    """The batch sampler's ``progress(done, steps)`` as "denoise" events; ``offset`` and ``total`` place a stage
    inside a longer bar (a second pass after the first)."""

    def report(done: int, steps: int) -> None:
        progress(ProgressEvent("denoise", offset + done, total if total is not None else steps, description))

    return report


@dataclass(frozen=True)
class FrameGroup:
    """Frames drawn by one ``generate`` call.

    Attributes:
        frames: Story frame indices, in drawing order.
        depends_on: Indices (in the plan's list) of earlier groups whose output these frames read.
        role: What the group is, for manifests and progress ("frames", "identity frames of mara"...).
        inputs: What else the frames are drawn from that no frame or group of the story holds (JSON-able; part of
            the group's key), e.g. identity images a method draws for itself.
    """

    frames: tuple[int, ...]
    depends_on: tuple[int, ...] = ()
    role: str = "frames"
    inputs: Mapping[str, Any] = field(default_factory=dict)


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
        overwrite: Redraw everything: what a method keeps of its own in ``run_dir`` (intermediate rounds) is not
            read back either.
    """

    progress: ProgressCallback = no_progress
    run_dir: Path | None = None
    cache_dir: Path | None = None
    overwrite: bool = False


class StoryMethod(abc.ABC):
    """Base class of story methods. Subclasses set ``name`` and ``settings_class``."""

    name: ClassVar[str]
    settings_class: ClassVar[type[MethodSettings]] = MethodSettings
    families: ClassVar[tuple[str, ...]] = ("sdxl", "sd15")
    """Model families the method runs on."""
    summary: ClassVar[str] = ""
    """One line for ``storycast methods``."""
    step_cache_safe: ClassVar[bool] = False
    """Whether the method may draw under a lossy step cache (``--cache``, :mod:`storycast.pipelines.step_cache`):
    True where each step of a draw is one denoiser evaluation of the same batch (the cache compares a step with
    the one before) and no draw writes tokens that another draw reads per step and layer, or such writing draws
    run uncached (``sample(..., cache=False)``). Otherwise a skipped block would leave a reader a step with
    nothing written for it. Methods that have not said so are refused the cache before any model loads."""
    card: ClassVar[MethodCard | None] = None
    """Families and why, training, input, cost per frame and source (``storycast methods``, the README's table)."""

    def __init_subclass__(cls, about: MethodAbout | None = None, **kwargs: Any) -> None:
        """``class XMethod(StoryMethod, about=ABOUT)``: the name, summary, families, settings class and card from
        the method's ``about.py``, where they are readable without importing the method (no torch)."""
        super().__init_subclass__(**kwargs)
        if about is not None:
            cls.name = about.name
            cls.summary = about.summary
            cls.families = about.families
            cls.settings_class = about.settings
            cls.card = about.card

    def __init__(self, models: LoadedModels, settings: MethodSettings | None = None):
        self.check_family(models.family)
        self.models = models
        self.settings = settings if settings is not None else self.settings_class()

    # -- asked before any model is loaded -------------------------------------------------------------

    @classmethod
    def check_family(cls, family: str) -> None:
        """Refuse a model family the method does not run on."""
        if family not in cls.families:
            from storycast.errors import SettingsError

            raise SettingsError(
                f"method '{cls.name}' runs on {' or '.join(cls.families)} models, but the model is {family}. "
                f"Fix: pick a matching --preset/--model."
            )

    @classmethod
    def check_step_cache(cls, cache: str | None) -> None:
        """Refuse a step cache (``ModelSpec.cache``'s name; None or "none": no cache) the method is not safe under."""
        if cache not in (None, "none") and not cls.step_cache_safe:
            from storycast.errors import SettingsError

            raise SettingsError(
                f"method '{cls.name}' does not run under a step cache (cache '{cache}'): its draws may share tokens "
                f"across frames or steps that a skipped block would leave unwritten. Fix: drop --cache, or use a "
                f"method that takes one (vanilla, storydiffusion)."
            )

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        """Generation settings this method prefers over the model's defaults (e.g. its paper's steps), for a
        model ``family``."""
        return {}

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        """Generation settings ``storycast benchmark`` uses by default with this method, so that its numbers are
        comparable with its paper's (e.g. the seeds); the command line still wins. Empty: the story files'."""
        return {}

    @classmethod
    def benchmark_settings(cls) -> dict[str, Any]:
        """Method settings (flat names) ``storycast benchmark`` uses by default, as the authors' benchmark script
        sets them where it differs from their demo (e.g. 1Prompt1Story's ``svr-eot``); ``--set`` still wins."""
        return {}

    @classmethod  # noqa: B027 - an optional hook
    def check_benchmark(cls, settings: MethodSettings, family: str | None = None) -> None:
        """Refuse, before any drawing, a benchmark run whose numbers would not be comparable with the paper's
        (e.g. a fall-back from the authors' detector); ``settings`` are resolved."""

    @classmethod
    def default_negative_prompt(cls) -> str | None:
        """Negative prompt used when neither the story nor the command line sets one."""
        return None

    @classmethod  # noqa: B027 - an optional hook
    def check(cls, story: Story, settings: MethodSettings, family: str | None = None) -> None:
        """Raise a :class:`~storycast.errors.StorycastError` naming the field and the fix when the method cannot
        draw ``story`` with ``settings`` (resolved) on a model ``family``; called before any model is loaded."""

    @classmethod
    def recorded_settings(cls, settings: MethodSettings, family: str | None = None) -> dict[str, Any]:
        """The resolved settings a run records and is keyed by. A method whose settings grew sections that a
        family never reads leaves them out there (see identitystory), so that runs made before they existed stay
        the same runs and resume instead of redrawing."""
        return settings.to_dict()

    @classmethod
    def nothing_to_keep(cls, story: Story, settings: MethodSettings) -> str | None:
        """Why the method keeps nothing consistent in ``story`` (no character it can take), with the fix; None when
        it has something to keep. Outside a benchmark the planner refuses such a story with this message; a
        benchmark run draws it as the method's plain frames, recorded per frame."""
        return None

    @classmethod
    def frame_limits(
        cls, story: Story, settings: MethodSettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        """The frames of ``story`` the method cannot take as they are, each with its fallback
        (:mod:`storycast.methods.limits`), asked by benchmark runs before any model loads; ``settings`` are
        resolved. ``tokenizer``: the model's first (CLIP) tokenizer, None where it cannot be had without loading
        the model (limits that need it are then not found). Outside a benchmark ``check`` refuses these frames."""
        return []

    @classmethod
    def reads_references(cls, settings: MethodSettings, family: str | None = None) -> bool:
        """Whether the method draws characters from their reference images with ``settings`` on ``family`` (a
        benchmark's image-reference mode) rather than from text alone."""
        return False

    @classmethod
    def plan(cls, story: Story, settings: MethodSettings) -> list[FrameGroup]:
        """Group frames for drawing: by default consecutive batches of ``story.settings.batch_size``."""
        size = max(1, story.settings.batch_size)
        indices = list(range(len(story)))
        return [FrameGroup(tuple(indices[i : i + size])) for i in range(0, len(indices), size)]

    @classmethod
    def planned_group(cls, story: Story, settings: MethodSettings, frames: Sequence[int]) -> FrameGroup:
        """The group of the plan holding exactly ``frames`` (what ``generate`` is asked to draw)."""
        found = next((g for g in cls.plan(story, settings) if g.frames == tuple(frames)), None)
        if found is None:
            raise ValueError(f"frames {list(frames)} are not a group of this story's plan")
        return found

    # -- with the models loaded -----------------------------------------------------------------------

    @property
    def backbone(self) -> Family:
        """The loaded model's family: what the method encodes, samples and decodes with."""
        return self.models.backbone

    def sampling(self, story: Story, scheduler: str = "model") -> Sampling:
        """How the story's frames are sampled on these models: its size, steps and guidance, and ``scheduler``."""
        from storycast.pipelines.sampler import Sampling

        return Sampling.of(self.backbone, story.settings, scheduler)

    def resolved_settings(self, story: Story) -> MethodSettings:
        """The settings with every automatic value decided for this story's generation settings and the
        loaded models (the planner records the same values in the manifest)."""
        facts = self.models.facts
        return self.settings.resolve(
            ResolveContext(story.settings, facts.family, facts.tiny, references=story.uses_references())
        )

    def prepare(self, story: Story, context: RunContext) -> None:  # noqa: B027 - optional hook
        """Work done once per run before drawing (identity discovery, loading trained weights)."""

    @abc.abstractmethod
    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        """Draw the frames of ``group`` and return them in the same order."""

    def restore(self, story: Story, group: FrameGroup, context: RunContext) -> None:
        """Rebuild in memory what ``group`` leaves for the groups that read it (a token bank, anchors) when an
        earlier run drew it: the runner calls this, once per run, before it draws a group depending on a group it
        did not draw. By default the group is drawn again and its frames dropped (the same seeds give the same
        tokens); a method whose groups depend on none is never asked."""
        self.generate(story, group.frames, context)

    def not_restored(self, what: str, group: Sequence[int], needed: Sequence[int]) -> StorycastError:
        """The error of drawing ``group`` while the group of frames ``needed`` (which left ``what``) is not in
        memory: a caller of ``generate`` who skipped the runner's restore."""
        from storycast.errors import StorycastError

        return StorycastError(
            f"{self.name} draws frames {list(group)} from {what} of frames {list(needed)}, which are not in memory. "
            f"Fix: draw the story through the runner (storycast generate, storycast.draw), which restores them, or "
            f"call restore(story, group, context) with that group first."
        )
