"""The contract every method keeps, on every family it claims, as diffusers' ``PipelineTesterMixin`` and lerobot's
policy tests hold every pipeline or policy to one suite.

Parametrised over ``list_methods()`` (and the worked example of docs/adding-a-method.md), each on the tiny preset of
each family in its ``families``:

- every frame is planned exactly once, a group depending on earlier groups only;
- bad input is refused while planning, before any model loads (an unknown setting, a family it does not run on);
- frames come back in story order, each with its own seed;
- the same seed gives the same pixels, and a group drawn alone (its dependencies restored by the runner, from a
  fresh method object, as after a restart) equals the same group of the full run;
- after a draw the loaded model is as it was: the same attention processors, and vanilla draws the same pixels
  before and after (LoRAs, adapters, tokenizers, FreeU left as they were); the app keeps models between draws and
  switches methods on them.

Per-method test files keep what is the method's own: its equivalence with the authors' formulation.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from storycast.errors import SettingsError, StorycastError
from storycast.methods.base import RunContext
from storycast.methods.registry import get_method, list_methods, register_method
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.runs.draw import draw
from storycast.runs.plan import plan_run
from storycast.runs.runner import draw_groups
from storycast.story.parse import parse_story
from tests.helpers import REPO_ROOT
from tests.methods.helpers import face_photo, pixels, two_friends

TINY = {"sdxl": "tiny", "sd15": "tiny-sd15", "flux": "tiny-flux"}
GENERATION = {"steps": 3, "width": 64, "height": 64}
FAST = {
    # Discovery is paid once per character: a small budget (random weights have no identity to find anyway).
    "identitystory": {"discovery_candidates": 12, "svd_rank": 2, "preview_images": 1, "discovery_steps": 2},
    "photomaker": {"discovery_candidates": 12, "svd_rank": 2, "preview_images": 1, "discovery_steps": 2},
    "story-adapter": {"rounds": 1},
}
EXAMPLE = "first-frame"
FROM_PHOTOS = {"pulid": "antelopev2"}
"""Methods that draw every character from its reference photos, with the face pack they read them with."""


def _register_example() -> None:
    """The worked example of docs/adding-a-method.md, registered as a third-party method would be."""
    examples = str(REPO_ROOT / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    register_method(EXAMPLE, "first_frame.method:FirstFrameMethod")


_register_example()
CASES = [(name, family) for name in list_methods() for family in get_method(name).families if family in TINY]


@functools.cache
def _photo_folder(pack: str) -> Path:
    """Reference photos of both characters and a tiny face pack, made once per session (collection plans with them)."""
    from storycast.vision.tiny_faces import write_tiny_face_pack

    folder = Path(tempfile.mkdtemp(prefix="storycast-contract-"))
    write_tiny_face_pack(folder / pack, pack=pack)
    for number, name in enumerate(("mara", "tom")):
        face_photo(folder / f"{name}.png", number + 1)
    return folder


def _story(name: str | None = None):
    data = two_friends()
    if name in FROM_PHOTOS:
        folder = _photo_folder(FROM_PHOTOS[name])
        for character in data["characters"]:
            character["references"] = [str(folder / f"{character['id']}.png")]
    return parse_story(data)


def _settings(name: str) -> dict | None:
    if name in FROM_PHOTOS:
        return {**FAST.get(name, {}), "face_models": str(_photo_folder(FROM_PHOTOS[name]) / FROM_PHOTOS[name])}
    return FAST.get(name)


@pytest.fixture(scope="module")
def loaded():
    """One fresh tiny model per family, shared by the methods as the app shares them (so a method that leaves a
    model changed changes what the next one draws)."""
    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_models(ModelSpec(source=TINY[family], device="cpu"))
        return cache[family]

    return get


def test_every_method_and_family_is_covered():
    assert {name for name, _ in CASES} == set(list_methods())
    assert {family for _, family in CASES} == set(TINY)


@pytest.mark.parametrize(("name", "family"), CASES)
def test_every_frame_is_planned_once_and_groups_depend_on_earlier_ones(name, family):
    plan = plan_run(_story(name), name, model=ModelSpec(source=TINY[family]), method_settings=_settings(name))
    frames = [i for group in plan.groups for i in group.frames]
    assert sorted(frames) == list(range(len(plan.story))) and len(frames) == len(set(frames))
    for number, group in enumerate(plan.groups):
        assert all(0 <= d < number for d in group.group.depends_on)


@pytest.mark.parametrize("name", sorted(set(list_methods())))
def test_bad_input_is_refused_while_planning(name, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for input that planning refuses")

    monkeypatch.setattr("storycast.models.loading.load_models", no_loading)
    family = get_method(name).families[0]
    with pytest.raises(SettingsError, match="unknown setting"):
        plan_run(_story(name), name, model=ModelSpec(source=TINY[family]), method_settings={"no_such_setting": 1})
    others = [f for f in TINY if f not in get_method(name).families]
    for other in others:
        with pytest.raises(SettingsError, match=" or ".join(get_method(name).families)):
            plan_run(_story(name), name, model=ModelSpec(source=TINY[other]))


def _state(models) -> dict:
    """What a draw must leave as it was: the processors' kinds, the LoRA adapters in effect (an adapter a method
    loaded may stay loaded, switched off), the tokenizers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    denoiser = models.backbone.denoiser
    tokenizers = [getattr(models.pipeline, n, None) for n in ("tokenizer", "tokenizer_2")]
    tuned = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
    return {
        "processors": {key: type(p).__name__ for key, p in denoiser.attn_processors.items()},
        "adapters in effect": sorted({a for m in tuned if not m.disable_adapters for a in m.active_adapters}),
        "tokenizers": [len(t) for t in tokenizers if t is not None],
    }


def _vanilla_frame(models, tmp_path):
    result = draw(_story(), "vanilla", models, generation=GENERATION, cache_dir=tmp_path)
    return pixels(result.frames[3].image)  # the frame naming nobody


@pytest.mark.parametrize(("name", "family"), CASES)
def test_a_draw_is_ordered_repeatable_restorable_and_leaves_the_model_as_it_was(name, family, loaded, tmp_path):
    models = loaded(family)
    before, vanilla_before = _state(models), _vanilla_frame(models, tmp_path)
    full = draw(_story(name), name, models, method_settings=_settings(name), generation=GENERATION, cache_dir=tmp_path)
    # Story order, each frame from its own seed.
    story = full.plan.story
    assert [f.index for f in full.frames] == list(range(len(story)))
    assert [f.seed for f in full.frames] == [story.frame_seed(i) for i in range(len(story))]
    assert [r["index"] for r in full.records] == list(range(len(story)))
    # The model as it was: processors, adapters, tokenizers; vanilla draws the same pixels as before.
    assert _state(models) == before
    assert np.array_equal(_vanilla_frame(models, tmp_path), vanilla_before)
    # A fresh method object draws the first group and the last one alone (what a restarted run does): the runner
    # restores what the last group reads; the pixels are the full run's.
    plan = full.plan
    method = plan.method(models, plan.settings)
    chosen = [plan.groups[0], plan.groups[-1]] if len(plan.groups) > 1 else [plan.groups[0]]
    again = {}
    context = RunContext(cache_dir=tmp_path)
    for _, results, _ in draw_groups(plan, method, models, context, groups=chosen):
        again.update({result.index: result for result in results})
    assert sorted(again) == sorted(i for group in chosen for i in group.frames)
    for index, result in again.items():
        assert np.array_equal(pixels(result.image), pixels(full.frames[index].image)), f"frame {index}"


def _reads_other_groups(name: str, family: str) -> bool:
    plan = plan_run(_story(name), name, model=ModelSpec(source=TINY[family]), method_settings=_settings(name))
    return any(g.group.depends_on for g in plan.groups)


@pytest.mark.parametrize(
    ("name", "family"), [(n, f) for n, f in CASES if f == get_method(n).families[0] and _reads_other_groups(n, f)]
)
def test_a_dependent_group_without_its_dependency_is_a_clear_error(name, family, loaded, tmp_path):
    """A caller of ``generate`` who skips the runner's restore gets a message naming the fix (methods whose
    groups read others'), never a KeyError from inside an attention layer."""
    models = loaded(family)
    plan = plan_run(_story(name), name, model=models, method_settings=_settings(name), generation=GENERATION)
    dependent = next(g for g in plan.groups if g.group.depends_on)
    method = plan.method(models, plan.settings)
    method.prepare(plan.story, RunContext(cache_dir=tmp_path))
    with pytest.raises(StorycastError, match="restore"):
        method.generate(plan.story, dependent.frames, RunContext(cache_dir=tmp_path))
