"""Changing an input of a frame redraws exactly the frames it affects; changing nothing redraws nothing.

Each case plans a story into a run folder, marks the plan as drawn the way ``execute_plan`` leaves a finished
run (manifest and frame files, no model loaded), edits one input, plans again and checks the exact set of frames
left to draw and the run-wide settings named as changed. Per-frame inputs (prompt, negative prompt, seed,
characters, reference photos, masks, control image) redraw their frames alone and leave the run as it was;
run-wide inputs (method and its settings, model, generation settings) make the folder hold another run, so
every frame is to draw and ``plan.conflict`` names what changed. One end-to-end test draws with the tiny
model to show that the runner follows the plan.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod
from storycast.models.spec import LoraSpec, ModelSpec
from storycast.runs.folder import MANIFEST_FORMAT, MANIFEST_NAME, frame_file
from storycast.runs.plan import RunPlan, plan_run
from storycast.story.model import Story
from storycast.story.parse import load_story, parse_story
from storycast.utils.io import atomic_write_json
from tests.helpers import small_story_data

TINY = ModelSpec(source="tiny", device="cpu")
FRAMES = 5
ALL = frozenset(range(FRAMES))
NOTHING: frozenset[int] = frozenset()
COLORS = {"mara.png": "red", "tom.png": "blue", "mara_mask.png": "white", "pose.png": "gray"}


# -- a run folder drawn without drawing ---------------------------------------------------------------------


def mark_drawn(plan: RunPlan) -> None:
    """Leave ``plan.out_dir`` as ``execute_plan`` leaves a finished run of ``plan``: a complete manifest whose
    frame records carry their group's key, and a file for every frame (any bytes: nothing is drawn)."""
    assert plan.out_dir is not None
    records: list[dict[str, Any] | None] = [None] * len(plan.story)
    for planned in plan.groups:
        for index in planned.frames:
            path = plan.out_dir / frame_file(index)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not really a png")
            records[index] = {
                "index": index,
                "file": frame_file(index),
                "key": planned.key,
                "group": list(planned.frames),
                "seed": plan.story.frame_seed(index),
            }
    atomic_write_json(
        plan.out_dir / MANIFEST_NAME,
        {
            "format": MANIFEST_FORMAT,
            "status": "complete",
            "run_key": plan.run_key,
            "run_summary": plan.summary,
            "groups": [{"frames": list(g.frames), "key": g.key} for g in plan.groups],
            "frames": records,
        },
    )


def paint(path: Path, color: str) -> None:
    """A small real image (parse checks the file exists; the planner hashes its bytes)."""
    Image.new("RGB", (16, 16), color).save(path)


def story_data() -> dict[str, Any]:
    """Two characters with reference photos, and frames that name one, both, or neither of them."""
    return {
        "title": "Planner story",
        "style": "A photo of",
        "characters": [
            {
                "id": "mara",
                "name": "Mara",
                "description": "a young woman with red hair",
                "class_word": "woman",
                "references": ["mara.png"],
            },
            {
                "id": "tom",
                "description": "an old man with a grey beard",
                "class_word": "man",
                "references": ["tom.png"],
            },
        ],
        "frames": [
            {"text": "{mara} reads a book in the garden"},
            {"text": "{tom} rides a bike", "control_image": "pose.png"},
            {"text": "{mara} and {tom} drink tea", "masks": {"mara": "mara_mask.png"}, "context": "drinking tea"},
            # Names no character, though its text has mara's class word: listing her changes nothing else.
            {"text": "a woman walks in the rain", "characters": []},
            {"text": "an empty street at night", "seed": 42},
        ],
        "settings": {"seed": 3},
    }


@dataclass
class Run:
    """One way of planning the story: its document and files, method, model and overrides."""

    root: Path
    data: dict[str, Any] = field(default_factory=story_data)
    method: str = "vanilla"
    model: ModelSpec = TINY
    method_settings: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    baseline: RunPlan | None = None

    def story(self) -> Story:
        return parse_story(copy.deepcopy(self.data), source=self.root / "story.yaml", base_dir=self.root)

    def plan(self) -> RunPlan:
        return plan_run(
            self.story(),
            self.method,
            model=self.model,
            method_settings=self.method_settings,
            generation=self.generation,
            out_dir=self.root / "run",
        )


@pytest.fixture
def story_run(tmp_path) -> Run:
    for name, color in COLORS.items():
        paint(tmp_path / name, color)
    return Run(root=tmp_path)


# -- edits ----------------------------------------------------------------------------------------------------

Edit = Callable[[Run], None]


def frame(index: int, **changes: Any) -> Edit:
    def edit(run: Run) -> None:
        run.data["frames"][index].update(changes)

    return edit


def character(character_id: str, **changes: Any) -> Edit:
    def edit(run: Run) -> None:
        entry = next(c for c in run.data["characters"] if c["id"] == character_id)
        entry.update(changes)

    return edit


def story_field(**changes: Any) -> Edit:
    def edit(run: Run) -> None:
        run.data.update(copy.deepcopy(changes))

    return edit


def story_settings(**changes: Any) -> Edit:
    def edit(run: Run) -> None:
        run.data["settings"].update(changes)

    return edit


def repaint(name: str, color: str = "green") -> Edit:
    def edit(run: Run) -> None:
        paint(run.root / name, color)

    return edit


def add_photo(character_id: str) -> Edit:
    def edit(run: Run) -> None:
        paint(run.root / f"{character_id}_2.png", "yellow")
        entry = next(c for c in run.data["characters"] if c["id"] == character_id)
        entry["references"] = [*entry["references"], f"{character_id}_2.png"]

    return edit


def options(**changes: Any) -> Edit:
    """Change how the run is planned: ``method``, ``model``, ``method_settings`` or ``generation``."""

    def edit(run: Run) -> None:
        for key, value in changes.items():
            setattr(run, key, value)

    return edit


def model(**changes: Any) -> Edit:
    def edit(run: Run) -> None:
        run.model = dataclasses.replace(run.model, **changes)

    return edit


def both(*edits: Edit) -> Edit:
    def edit(run: Run) -> None:
        for one in edits:
            one(run)

    return edit


def same_as_automatic(name: str) -> Edit:
    """Set method setting ``name`` on the command line to the value its automatic default resolved to."""

    def edit(run: Run) -> None:
        assert run.baseline is not None
        resolved = run.baseline.settings.get(name)
        assert resolved is not None, f"{name} was left unresolved in the plan"
        run.method_settings = {**(run.method_settings or {}), name: str(resolved)}

    return edit


def unchanged(run: Run) -> None:
    """Edit nothing."""


def check_edit(run: Run, edit: Edit, redrawn: frozenset[int], conflict: Sequence[str] | None) -> None:
    """Plan and mark drawn; planning again changes nothing; after ``edit`` exactly ``redrawn`` is to draw."""
    first = run.plan()
    assert first.frames_to_draw == list(range(FRAMES)) and first.conflict is None
    mark_drawn(first)
    run.baseline = first

    again = run.plan()
    assert again.todo == [] and again.frames_to_draw == [] and again.conflict is None
    assert again.run_key == first.run_key and [g.key for g in again.groups] == [g.key for g in first.groups]
    assert again.finished and sorted(again.previous) == list(range(FRAMES))

    edit(run)
    edited = run.plan()
    assert edited.frames_to_draw == sorted(redrawn)
    assert edited.conflict == (None if conflict is None else sorted(conflict))
    kept = [i for g in edited.groups if g.drawn for i in g.frames]
    assert sorted(kept) == sorted(ALL - redrawn)
    assert sorted(edited.previous) == sorted(kept)


# -- per-frame inputs: only the frames that read them are redrawn, the run stays the same run --------------

PER_FRAME = [
    pytest.param(frame(1, text="{tom} rides a horse"), {1}, id="prompt"),
    pytest.param(story_field(style="A watercolor of"), ALL, id="prompt-style-of-every-frame"),
    pytest.param(frame(0, negative_prompt="blurry"), {0}, id="negative-prompt"),
    pytest.param(frame(1, seed=99), {1}, id="seed"),
    # IdentityStory builds its multi-character prompt from the context (prompt_style "authors").
    pytest.param(frame(2, context="drinking coffee"), {2}, id="context"),
    pytest.param(story_settings(seed=10), {0, 1, 2, 3}, id="story-seed-for-frames-without-their-own"),
    pytest.param(frame(3, characters=["mara"]), {3}, id="characters"),
    pytest.param(character("mara", description="a young woman with black hair"), {0, 2}, id="character-description"),
    pytest.param(character("mara", class_word="hair"), {0, 2}, id="character-class-word"),
    pytest.param(repaint("mara.png"), {0, 2}, id="reference-photo-of-mara"),
    pytest.param(repaint("tom.png"), {1, 2}, id="reference-photo-of-tom"),
    pytest.param(add_photo("tom"), {1, 2}, id="reference-photo-added"),
    pytest.param(repaint("mara_mask.png", "black"), {2}, id="mask"),
    pytest.param(repaint("pose.png", "black"), {1}, id="control-image"),
]


@pytest.mark.parametrize("method", ["vanilla", "identitystory"])
@pytest.mark.parametrize(("edit", "redrawn"), PER_FRAME)
def test_a_frame_input_redraws_only_the_frames_that_read_it(story_run, method, edit, redrawn):
    story_run.method = method
    check_edit(story_run, edit, frozenset(redrawn), conflict=None)


# -- run-wide inputs: every frame is redrawn, and the folder's run is named as another one -----------------

IDENTITYSTORY = options(method="identitystory")
SDXL_HUB_PRESET = options(model=ModelSpec(source="sdxl", device="cpu"))
WITH_LORA = options(model=dataclasses.replace(TINY, loras=(LoraSpec("style.safetensors", 0.8),)))

RUN_WIDE = [
    # (setup before the first plan, edit, changed summary fields)
    pytest.param(
        IDENTITYSTORY,
        story_field(methods={"identitystory": {"sweet_spot_step": 3}}),
        ["method settings"],
        id="method-settings-in-the-story-file",
    ),
    pytest.param(
        IDENTITYSTORY, options(method_settings={"sweet_spot_step": "3"}), ["method settings"], id="method-settings-cli"
    ),
    pytest.param(
        both(IDENTITYSTORY, story_field(methods={"identitystory": {"sweet_spot_step": 3}})),
        options(method_settings={"sweet_spot_step": "2"}),
        ["method settings"],
        id="method-settings-cli-over-the-story-file",
    ),
    pytest.param(unchanged, IDENTITYSTORY, ["generation settings", "method", "method settings"], id="method-itself"),
    pytest.param(unchanged, model(seed=1), ["model"], id="model-weights-seed"),
    pytest.param(unchanged, model(source="tiny-sd15"), ["model"], id="model-family"),
    pytest.param(SDXL_HUB_PRESET, model(revision="abc"), ["model"], id="model-revision"),
    pytest.param(unchanged, model(dtype="bf16"), ["model"], id="model-dtype"),
    pytest.param(unchanged, WITH_LORA, ["model"], id="model-lora-added"),
    pytest.param(WITH_LORA, model(loras=(LoraSpec("style.safetensors", 0.5),)), ["model"], id="model-lora-scale"),
    pytest.param(unchanged, story_settings(width=64, height=64), ["generation settings"], id="size-in-the-story-file"),
    pytest.param(unchanged, options(generation={"width": 96}), ["generation settings"], id="size-cli"),
    pytest.param(unchanged, story_settings(steps=6), ["generation settings"], id="steps-in-the-story-file"),
    pytest.param(unchanged, options(generation={"steps": 5}), ["generation settings"], id="steps-cli"),
    pytest.param(
        unchanged, story_settings(guidance_scale=6.0), ["generation settings"], id="guidance-scale-in-the-story-file"
    ),
    pytest.param(unchanged, options(generation={"guidance_scale": 3.5}), ["generation settings"], id="guidance-cli"),
    pytest.param(
        unchanged, story_settings(negative_prompt="blurry"), ["generation settings"], id="story-negative-prompt"
    ),
]


@pytest.mark.parametrize(("setup", "edit", "changed"), RUN_WIDE)
def test_a_run_wide_input_redraws_every_frame_and_names_the_change(story_run, setup, edit, changed):
    setup(story_run)
    check_edit(story_run, edit, ALL, conflict=changed)


def test_a_run_of_other_settings_is_refused_and_overwrite_redraws_it(story_run):
    from storycast.errors import RunFolderError

    mark_drawn(story_run.plan())
    story_run.generation = {"steps": 5}
    plan = story_run.plan()
    with pytest.raises(RunFolderError, match="generation settings"):
        plan.check_folder(overwrite=False)
    overwritten = plan_run(
        story_run.story(),
        "vanilla",
        model=TINY,
        generation={"steps": 5},
        out_dir=story_run.root / "run",
        overwrite=True,
    )
    assert overwritten.frames_to_draw == list(range(FRAMES))
    overwritten.check_folder(overwrite=True)


def test_overwrite_redraws_every_frame_of_the_same_run(story_run):
    mark_drawn(story_run.plan())
    story = story_run.story()
    plan = plan_run(story, "vanilla", model=TINY, out_dir=story_run.root / "run", overwrite=True)
    assert plan.conflict is None and plan.frames_to_draw == list(range(FRAMES)) and plan.previous == {}


# -- changing nothing redraws nothing ---------------------------------------------------------------------

NO_CHANGE = [
    # (setup before the first plan, edit that changes no frame's inputs)
    pytest.param(unchanged, unchanged, id="nothing"),
    pytest.param(unchanged, repaint("mara.png", COLORS["mara.png"]), id="reference-photo-rewritten-with-same-bytes"),
    pytest.param(unchanged, frame(1, caption="Tom's ride"), id="caption-only-for-the-storyboard"),
    pytest.param(unchanged, character("mara", name="Mara Jones"), id="display-name-only-for-captions"),
    pytest.param(unchanged, model(dtype="fp32"), id="dtype-auto-is-fp32-on-cpu"),
    pytest.param(unchanged, model(device="cpu", offload="none", vae_tiling=False), id="same-model-spec"),
    pytest.param(unchanged, options(generation={"steps": 4, "width": 128}), id="generation-equal-to-the-defaults"),
    pytest.param(
        story_settings(steps=6), options(generation={"steps": 6}), id="cli-generation-equal-to-the-story-file"
    ),
    pytest.param(IDENTITYSTORY, same_as_automatic("sweet_spot_step"), id="method-setting-equal-to-its-automatic"),
    pytest.param(
        both(IDENTITYSTORY, story_field(methods={"identitystory": {"sweet_spot_step": 3}})),
        options(method_settings={"sweet_spot_step": "3"}),
        id="cli-method-setting-equal-to-the-story-file",
    ),
]


@pytest.mark.parametrize(("setup", "edit"), NO_CHANGE)
def test_changing_nothing_redraws_nothing(story_run, setup, edit):
    setup(story_run)
    check_edit(story_run, edit, NOTHING, conflict=None)


def test_a_deleted_frame_file_is_redrawn_alone(story_run):
    mark_drawn(story_run.plan())
    (story_run.root / "run" / frame_file(3)).unlink()
    assert story_run.plan().frames_to_draw == [3]


# -- groups -------------------------------------------------------------------------------------------------


def test_a_frame_edit_redraws_its_whole_batch(story_run):
    story_run.data["settings"]["batch_size"] = 2
    story_run.method = "vanilla"
    groups = [g.frames for g in story_run.plan().groups]
    assert groups == [(0, 1), (2, 3), (4,)]
    check_edit(story_run, frame(3, text="a woman walks in the snow"), frozenset({2, 3}), conflict=None)


class AnchoredMethod(StoryMethod):
    """Frame 0 is an anchor that frame 1 reads; frame 2 stands alone (planned only, never drawn)."""

    name = "anchored"
    summary = "test method: frame 1 depends on frame 0"

    @classmethod
    def plan(cls, story: Story, settings: Any) -> list[FrameGroup]:
        return [FrameGroup((0,), role="anchor"), FrameGroup((1,), depends_on=(0,)), FrameGroup((2,))]

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        raise AssertionError("the planner never draws")


@pytest.mark.parametrize(
    ("edited", "redrawn"),
    [(0, [0, 1]), (1, [1]), (2, [2])],
    ids=["anchor-and-its-dependent", "dependent-alone", "independent-alone"],
)
def test_editing_a_group_redraws_the_groups_that_depend_on_it(tmp_path, edited, redrawn):
    data = small_story_data(3)
    out = tmp_path / "run"
    first = plan_run(parse_story(data), AnchoredMethod, model=TINY, out_dir=out)
    mark_drawn(first)
    assert plan_run(parse_story(data), AnchoredMethod, model=TINY, out_dir=out).todo == []
    data["frames"][edited]["text"] = "{mara} under an umbrella"
    assert plan_run(parse_story(data), AnchoredMethod, model=TINY, out_dir=out).frames_to_draw == redrawn


# -- end to end: the runner draws what the plan says, and loads nothing when nothing is left --------------

GEN = {"steps": 1, "width": 64, "height": 64}


def test_the_runner_redraws_only_the_edited_frame_and_loads_nothing_when_all_is_drawn(
    write_story, tmp_path, monkeypatch
):
    import storycast.runs.runner as runner
    from storycast.runs.runner import RunOptions, generate_story

    data = small_story_data(3)
    out = tmp_path / "run"
    first = generate_story(load_story(write_story(data)), "vanilla", TINY, RunOptions(out_dir=out), generation=GEN)
    assert first.drawn == [0, 1, 2] and first.kept == []
    untouched = {i: (out / frame_file(i)).stat().st_mtime_ns for i in (0, 2)}

    data["frames"][1]["text"] = "{mara} on a boat"
    story = load_story(write_story(data))
    assert plan_run(story, "vanilla", model=TINY, generation=GEN, out_dir=out).frames_to_draw == [1]
    second = generate_story(story, "vanilla", TINY, RunOptions(out_dir=out), generation=GEN)
    assert second.drawn == [1] and second.kept == [0, 2]
    assert {i: (out / frame_file(i)).stat().st_mtime_ns for i in (0, 2)} == untouched

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing is left to draw, so no model should be loaded")

    monkeypatch.setattr(runner, "load_models", no_loading)
    third = generate_story(load_story(write_story(data)), "vanilla", TINY, RunOptions(out_dir=out), generation=GEN)
    assert third.drawn == [] and third.kept == [0, 1, 2] and third.loaded_models is None
    assert plan_run(story, "vanilla", model=TINY, generation=GEN, out_dir=out).finished


@pytest.mark.parametrize(
    ("generation", "message"),
    [
        ({"width": 0}, r"width 0 \(from the command line\) is out of range"),
        ({"height": 100}, r"height 100 \(from the command line\) is not a multiple of 8"),
        ({"width": 100000}, r"width 100000 .*between 64 and 4096"),
        ({"steps": 0}, r"steps 0 .*between 1 and 1000"),
        ({"steps": 100000}, r"steps 100000 .*between 1 and 1000"),
        ({"seed": -1}, r"seed -1 .*between 0 and 18446744073709551615"),
        ({"seed": 2**64}, r"seed 18446744073709551616 .*out of range"),
        ({"guidance_scale": float("nan")}, "guidance_scale nan .*finite"),
        ({"guidance_scale": -2.0}, "guidance_scale -2.0 .*at least 0"),
        ({"batch_size": 0}, "batch_size 0 .*between 1 and 64"),
    ],
)
def test_generation_values_out_of_range_are_refused_naming_where_they_came_from(generation, message):
    from storycast.errors import SettingsError

    with pytest.raises(SettingsError, match=message):
        plan_run(parse_story(small_story_data(1)), "vanilla", model=ModelSpec(source="tiny"), generation=generation)


def test_story_file_values_are_blamed_on_the_story_file(write_story):
    from storycast.errors import StoryError

    data = small_story_data(1)
    data["settings"]["width"] = 8192  # a multiple of 8, as the story format asks, but beyond the planner's limit
    path = write_story(data)
    with pytest.raises(StoryError, match=rf"{path}: settings\.width: .*8192 pixels is out of range"):
        load_story(path)  # refused where the story is read, with the planner's limits


def test_a_misspelt_method_under_methods_is_an_error_with_a_did_you_mean(write_story):
    from storycast.errors import StoryError, UnknownMethodError

    data = small_story_data(1)
    data["methods"] = {"identitystroy": {"sweet_spot_step": 3}}
    with pytest.raises(StoryError, match=r"methods\.identitystroy: unknown method.*did you mean 'identitystory'"):
        plan_run(load_story(write_story(data)), "vanilla", model=ModelSpec(source="tiny"))
    with pytest.raises(UnknownMethodError, match="did you mean 'storydiffusion'"):
        plan_run(parse_story(small_story_data(1)), "storydifusion", model=ModelSpec(source="tiny"))
