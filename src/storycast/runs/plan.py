"""The run planner: settings resolved, every input checked, and what is already drawn decided, before any
model is loaded.

:func:`plan_run` is pure and cheap (it reads the story's files for their hashes and the run folder's
manifest, nothing else): the CLI, the benchmark runner, and later the app and distributed workers all
call it, so "is this frame up to date?" is decided here and nowhere else, and a bad flag fails in
milliseconds. A group's key hashes everything its frames are drawn from: the run-wide settings (method,
its resolved settings, model, generation settings), its frames' own inputs, and the keys of the groups
it depends on, so editing an identity frame redraws the frames that read it and nothing else.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import Problem, SettingsError, StorycastError, StoryError
from storycast.methods.base import FrameGroup, StoryMethod
from storycast.methods.registry import get_method, get_settings_class, list_methods
from storycast.models.facts import ModelFacts, model_facts
from storycast.settings import MethodSettings, ResolveContext
from storycast.story.inputs import frame_inputs
from storycast.story.limits import MAX_BATCH, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE
from storycast.story.model import SEED_POLICIES, GenerationSettings, Story
from storycast.utils.io import sha256_json

if TYPE_CHECKING:
    from storycast.methods.limits import FrameLimit
    from storycast.models.loading import LoadedModels
    from storycast.models.spec import ModelSpec
    from storycast.runs.folder import RunFolder

GENERATION_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationSettings))


def resolve_generation(
    story: Story,
    model: ModelFacts | LoadedModels,
    method: type[StoryMethod] | StoryMethod,
    overrides: Mapping[str, Any] | None = None,
    *,
    where: str = "the command line",
) -> GenerationSettings:
    """Fill every generation setting: model defaults < method defaults < story file < ``overrides``, then
    the tiny presets' fixed values (their few steps), and check the result.

    Raises:
        SettingsError: An unknown override, or a value out of range (naming where it came from).
    """
    facts = model if isinstance(model, ModelFacts) else model.facts
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(GENERATION_FIELDS)
    if unknown:
        raise SettingsError(
            f"unknown generation setting(s): {', '.join(sorted(unknown))}. Fix: use {', '.join(GENERATION_FIELDS)}."
        )
    values: dict[str, Any] = {k: getattr(facts.defaults, k) for k in ("width", "height", "steps", "guidance_scale")}
    values["negative_prompt"] = method.default_negative_prompt()
    values.update(method.generation_defaults(facts.family))
    for key in facts.defaults.outrank_method:
        values[key] = getattr(facts.defaults, key)
    story_values = dataclasses.asdict(story.settings)
    explicit = {k: v for k, v in story_values.items() if v is not None and v != getattr(GenerationSettings(), k)}
    values.update(explicit)
    values.update(overrides)
    for key in ("seed", "batch_size", "seed_policy"):
        values.setdefault(key, story_values[key])
    resolved = GenerationSettings(**{k: values.get(k) for k in GENERATION_FIELDS})
    in_story = f"{story.source}: settings" if story.source else "the story's settings"
    origin = {
        k: (where if k in overrides else in_story if k in explicit else "the defaults") for k in GENERATION_FIELDS
    }
    _check_generation(resolved, origin)
    _check_for_family(story, resolved, origin, facts)
    return resolved


def _check_for_family(
    story: Story, settings: GenerationSettings, origin: Mapping[str, str], facts: ModelFacts
) -> None:
    """Settings the model's family cannot honour: a size its latents cannot pack, a guidance it does not use."""
    from storycast.pipelines.families import get_family

    family = get_family(facts.family)
    multiple = family.size_multiple
    for key in ("width", "height"):
        value = getattr(settings, key)
        if value % multiple:
            raise SettingsError(
                f"{key} {value} (from {origin[key]}) is not a multiple of {multiple}: {facts.family} packs its latents "
                f"into 2x2 patches of 8-pixel cells. Fix: use a multiple of {multiple}, e.g. {value // multiple * multiple or multiple}."
            )
    if facts.guidance == "cfg" and settings.true_cfg_scale is not None:
        raise SettingsError(
            f"true_cfg_scale {settings.true_cfg_scale} (from {origin['true_cfg_scale']}) is FLUX's classifier-free "
            f"guidance beside its embedded guidance; on {facts.family}, guidance_scale is classifier-free guidance "
            f"already. Fix: drop true_cfg_scale and set guidance_scale."
        )
    without = [i for i, frame in enumerate(story.frames) if frame.negative_prompt is None]
    if (
        settings.true_cfg_scale is not None
        and settings.true_cfg_scale > 1
        and not settings.negative_prompt
        and without
    ):
        # FluxPipeline applies true CFG only with a negative prompt (do_true_cfg): without one it would be silently off.
        raise SettingsError(
            f"true_cfg_scale {settings.true_cfg_scale} (from {origin['true_cfg_scale']}) guides away from a negative "
            f"prompt, and frames {without[:5]} have none. Fix: give one (--negative-prompt '...', settings."
            f"negative_prompt or frames[i].negative_prompt), or drop true_cfg_scale."
        )
    if facts.guidance == "none" and settings.guidance_scale:
        raise SettingsError(
            f"guidance_scale {settings.guidance_scale} (from {origin['guidance_scale']}): this model takes no guidance "
            f"(timestep-distilled, as FLUX.1-schnell), so the value would be ignored. Fix: set guidance_scale to 0 "
            f"(or leave it out), or use true_cfg_scale with a negative prompt for classifier-free guidance."
        )


def _check_generation(settings: GenerationSettings, origin: Mapping[str, str]) -> None:
    def fail(key: str, message: str) -> None:
        raise SettingsError(f"{key} {getattr(settings, key)!r} (from {origin[key]}) {message}")

    for key in ("width", "height"):
        value = settings.__dict__[key]
        if not MIN_SIDE <= value <= MAX_SIDE:
            fail(
                key, f"is out of range. Fix: use a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}, e.g. 512 or 1024."
            )
        if value % 8:
            fail(key, "is not a multiple of 8. Fix: use e.g. 512 or 1024.")
    if not 1 <= settings.steps <= MAX_STEPS:
        fail("steps", f"is out of range. Fix: use between 1 and {MAX_STEPS} steps (the papers use 30 to 50).")
    if not 1 <= settings.batch_size <= MAX_BATCH:
        fail("batch_size", f"is out of range. Fix: use between 1 and {MAX_BATCH} frames per batch.")
    if not (math.isfinite(settings.guidance_scale) and settings.guidance_scale >= 0):
        fail("guidance_scale", "must be a finite number of at least 0 (the papers use 5 to 7.5).")
    true_cfg = settings.true_cfg_scale
    if true_cfg is not None and not (math.isfinite(true_cfg) and true_cfg >= 1):
        fail(
            "true_cfg_scale",
            "must be a finite number of at least 1 (1 turns it off; e.g. 4.0 with a negative prompt).",
        )
    if not 0 <= settings.seed <= MAX_SEED:
        fail("seed", f"is out of range. Fix: use a whole number between 0 and {MAX_SEED}.")
    if settings.seed_policy not in (None, *SEED_POLICIES):
        fail("seed_policy", f"is not a seed policy. Fix: use {' or '.join(SEED_POLICIES)}.")


@dataclass(frozen=True)
class PlannedGroup:
    """A group of the plan with its key and whether the folder already holds it.

    Attributes:
        group: The method's group (frames, dependencies, role).
        key: Hash of everything the group's frames are drawn from, dependencies' keys included.
        drawn: Every frame of the group is in the folder, drawn from these inputs.
    """

    group: FrameGroup
    key: str
    drawn: bool = False

    @property
    def frames(self) -> tuple[int, ...]:
        return self.group.frames


@dataclass
class RunPlan:
    """What a run will do, decided before any model is loaded.

    Attributes:
        story: The story with its generation settings resolved.
        method: The method's class.
        settings: The method's settings, every automatic value resolved.
        generation: The resolved generation settings (also ``story.settings``).
        model: What is known of the model without loading it.
        groups: The method's groups in drawing order, with keys.
        run_key: Hash of the run-wide settings (``summary``).
        summary: Method, settings, model and generation settings: what makes two runs the same run.
        conflict: When the folder holds a run of other settings: which of them differ; else None.
        previous: The folder's previous frame records that are still valid, by frame index.
        status: The folder's previous manifest status ("complete", "running"...), None without one.
        out_dir: The run folder, when planned against one.
        unsafe: Why drawing into ``out_dir`` would destroy files the run did not write, else None.
    """

    story: Story
    method: type[StoryMethod]
    settings: MethodSettings
    generation: GenerationSettings
    model: ModelFacts
    groups: list[PlannedGroup]
    run_key: str
    summary: dict[str, Any]
    conflict: list[str] | None = None
    previous: dict[int, dict[str, Any]] = field(default_factory=dict)
    status: str | None = None
    out_dir: Path | None = None
    unsafe: str | None = None
    limits: list[FrameLimit] = field(default_factory=list)
    """The frames drawn by a fallback, and the notes on frames (planned with ``fallback``), in frame order."""

    @property
    def todo(self) -> list[PlannedGroup]:
        """Groups to draw, in order."""
        return [g for g in self.groups if not g.drawn]

    @property
    def frames_to_draw(self) -> list[int]:
        return sorted(i for g in self.todo for i in g.frames)

    @property
    def finished(self) -> bool:
        """Nothing to draw and the folder's run was completed (storyboard and manifest written)."""
        return not self.todo and self.conflict is None and self.status == "complete"

    def check_folder(self, overwrite: bool) -> None:
        """Refuse to mix two different runs in one folder unless ``overwrite`` is set (nothing is changed)."""
        from storycast.errors import RunFolderError

        if self.unsafe:
            raise RunFolderError(self.unsafe)
        if self.conflict and not overwrite:
            raise RunFolderError(
                f"'{self.out_dir}' holds a run drawn with different {', '.join(self.conflict)}. Fix: pass --overwrite "
                f"(overwrite=True in Python) to replace it, or choose another --out folder (nothing was changed)."
            )


def resolve_method_settings(
    story: Story,
    method: type[StoryMethod],
    overrides: Mapping[str, Any] | None,
    *,
    where: str = "--set",
) -> MethodSettings:
    """The story file's ``methods.<name>`` settings, then ``overrides`` on top (errors name each origin)."""
    file_where = f"{story.source}: methods.{method.name}" if story.source else f"methods.{method.name}"
    settings = method.settings_class.from_mapping(story.methods.get(method.name, {}), where=file_where)
    return settings.updated(overrides, where=where)


def method_section_problems(story: Story) -> list[Problem]:
    """Every problem of the story's ``methods:`` section, without importing any method (no torch): a name that is
    no method (with did-you-mean), and each named method's unknown or invalid settings. A misspelt name or setting
    would otherwise be silently ignored."""
    known = list_methods()
    problems = []
    for name, values in story.methods.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known methods: {', '.join(known)}"
            problems.append(Problem(f"methods.{name}", "unknown method", f"rename it ({hint})"))
            continue
        try:
            get_settings_class(name).from_mapping(values, where=f"methods.{name}")
        except SettingsError as err:
            message, _, fix = str(err).partition(" Fix: ")
            problems.append(Problem("", message.rstrip("."), fix))
    return problems


def check_method_names(story: Story) -> None:
    """Raise every problem of the story's ``methods:`` section at once (:func:`method_section_problems`)."""
    problems = method_section_problems(story)
    if problems:
        raise StoryError(problems, story.source)


def fall_back(
    story: Story, method: type[StoryMethod], settings: MethodSettings, family: str, tokenizer: Any = None
) -> tuple[Story, list[FrameLimit]]:
    """``story`` as a benchmark run draws it with ``method``: each frame the method cannot take as it is changed by
    its fallback (:mod:`storycast.methods.limits`), a story left with nothing to keep drawn as plain frames, and
    the notes every method meets on the family's text encoders; with the limits, in frame order."""
    from storycast.methods.limits import apply_limits, plain_frames, text_notes

    limits = method.frame_limits(story, settings, family, tokenizer)
    story = apply_limits(story, limits)
    reason = method.nothing_to_keep(story, settings)
    if reason is not None and story.appearing_characters():
        plain = plain_frames(story, "nothing-to-keep", reason.partition(" Fix: ")[0])
        limits += [limit for limit in plain if limit.characters]
        story = apply_limits(story, plain)
    limits += text_notes(story, tokenizer, family)
    return story, sorted(limits, key=lambda limit: limit.frame)


def group_keys(story: Story, groups: list[FrameGroup], run_key: str) -> list[str]:
    """Each group's key: the run key, its frames' inputs, its own further inputs and its dependencies' keys."""
    keys: list[str] = []
    for number, group in enumerate(groups):
        if any(not 0 <= d < number for d in group.depends_on):
            raise RuntimeError(
                f"group {number} depends on {group.depends_on}: a group may depend on earlier ones only"
            )
        keys.append(
            sha256_json(
                {
                    "run": run_key,
                    "frames": [frame_inputs(story, i) for i in group.frames],
                    "group": list(group.frames),
                    "depends_on": [keys[d] for d in group.depends_on],
                    "inputs": dict(group.inputs),
                }
            )
        )
    return keys


def _check_coverage(method: type[StoryMethod], groups: list[FrameGroup], frames: int) -> None:
    covered = sorted(i for group in groups for i in group.frames)
    if covered != list(range(frames)):
        raise RuntimeError(f"method '{method.name}' planned frames {covered} for a story of {frames} frames")


def plan_run(
    story: Story,
    method: str | type[StoryMethod] | StoryMethod,
    *,
    model: ModelSpec | LoadedModels | ModelFacts,
    method_settings: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    settings_origin: str = "--set",
    fallback: bool = False,
    tokenizer: Any = None,
) -> RunPlan:
    """Plan drawing ``story`` with ``method`` on ``model`` into ``out_dir``, loading nothing.

    Args:
        story: The parsed story.
        method: A method name (did-you-mean on a typo), class, or configured instance (whose settings are used).
        model: The model spec (or loaded models, or their facts).
        method_settings: Setting overrides on top of the story file's ``methods.<name>`` (by name).
        generation: Overrides of the generation settings (width, height, steps, guidance_scale, seed...).
        out_dir: The run folder; without one every group is to draw.
        overwrite: Redraw every group.
        settings_origin: Where ``method_settings`` come from, for messages.
        fallback: Draw every frame the method cannot take as it is by its fallback (:func:`fall_back`), recorded in
            ``RunPlan.limits``, instead of refusing the story (benchmark runs).
        tokenizer: The model's first tokenizer, for the limits that count tokens (with ``fallback``).

    Raises:
        UnknownMethodError, SettingsError, StoryError, StorycastError: bad input, naming it and the fix.
    """
    check_method_names(story)
    instance = method if isinstance(method, StoryMethod) else None
    method_class = type(method) if instance is not None else get_method(method) if isinstance(method, str) else method
    facts = model if isinstance(model, ModelFacts) else model_facts(model)
    method_class.check_family(facts.family)
    method_class.check_step_cache(facts.identity.get("cache"))
    if instance is not None:
        if method_settings:
            raise SettingsError(
                "method_settings apply to a method given by name; configure the method object instead."
            )
        settings = instance.settings
    else:
        settings = resolve_method_settings(story, method_class, method_settings, where=settings_origin)
    resolved = resolve_generation(story, facts, method_class, generation)
    story = dataclasses.replace(story, settings=resolved)
    unresolved = settings
    settings = settings.resolve(ResolveContext(resolved, facts.family, facts.tiny, references=story.uses_references()))
    limits: list[FrameLimit] = []
    if fallback:
        story, limits = fall_back(story, method_class, settings, facts.family, tokenizer)
        context = ResolveContext(resolved, facts.family, facts.tiny, references=story.uses_references())
        settings = unresolved.resolve(context)  # references a fallback leaves unread change what is resolved
    else:
        reason = method_class.nothing_to_keep(story, settings)
        if reason:
            raise StorycastError(reason)
    method_class.check(story, settings, facts.family)
    groups = method_class.plan(story, settings)
    _check_coverage(method_class, groups, len(story))

    summary = {
        "method": method_class.name,
        "method settings": method_class.recorded_settings(settings, facts.family),
        "model": dict(facts.identity),
        "generation settings": {
            # Seeds reach each frame's own key (its seed), so a change redraws only the frames it moves; a setting
            # left unset that earlier versions did not have (true_cfg_scale) is not recorded, so their runs stay
            # the same runs.
            k: v
            for k, v in dataclasses.asdict(resolved).items()
            if k not in ("seed", "batch_size", "seed_policy") and not (k == "true_cfg_scale" and v is None)
        },
    }
    run_key = sha256_json(summary)
    keys = group_keys(story, groups, run_key)
    plan = RunPlan(
        story=story,
        method=method_class,
        settings=settings,
        generation=resolved,
        model=facts,
        groups=[PlannedGroup(g, k) for g, k in zip(groups, keys, strict=True)],
        run_key=run_key,
        summary=summary,
        out_dir=Path(out_dir) if out_dir is not None else None,
        limits=limits,
    )
    if out_dir is not None:
        _mark_drawn(plan, overwrite)
    return plan


def _mark_drawn(plan: RunPlan, overwrite: bool) -> None:
    from storycast.runs.folder import RunFolder

    assert plan.out_dir is not None
    folder: RunFolder = RunFolder(plan.out_dir)
    plan.unsafe = folder.unsafe(plan.story.source, overwrite)
    plan.status = folder.status
    plan.conflict = folder.conflict(plan.run_key, plan.summary)
    if overwrite or plan.conflict:
        return
    for number, planned in enumerate(plan.groups):
        records = [folder.finished_record(i, planned.key) for i in planned.frames]
        if all(records):
            plan.groups[number] = dataclasses.replace(planned, drawn=True)
            for index, record in zip(planned.frames, records, strict=True):
                assert record is not None
                plan.previous[index] = record
