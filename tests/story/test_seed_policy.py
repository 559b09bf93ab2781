"""The seed policy: frame i from seed + i (per-frame, the default) or every frame from the story seed (same, the
IdentityStory authors' benchmark protocol); a frame's own seed wins; it reaches the resume keys."""

from __future__ import annotations

import pytest

from storycast.errors import SettingsError, StoryError
from storycast.models.spec import ModelSpec
from storycast.runs.plan import plan_run
from storycast.story.parse import parse_story, story_to_dict
from tests.helpers import small_story_data
from tests.runs.test_plan import mark_drawn


def story(policy=None, seed=3):
    data = small_story_data(4)
    data["settings"] = {"seed": seed, **({"seed_policy": policy} if policy else {})}
    data["frames"][2]["seed"] = 99
    return parse_story(data)


def test_per_frame_is_the_default_and_same_gives_every_frame_the_story_seed():
    assert [story().frame_seed(i) for i in range(4)] == [3, 4, 99, 6]
    assert [story("per-frame").frame_seed(i) for i in range(4)] == [3, 4, 99, 6]
    assert [story("same").frame_seed(i) for i in range(4)] == [3, 3, 99, 3]  # a frame's own seed wins
    assert story_to_dict(story("same"))["settings"]["seed_policy"] == "same"


def test_a_bad_policy_is_refused_where_it_was_written():
    with pytest.raises(StoryError, match=r"settings\.seed_policy: 'random' is not a seed policy.*Fix: use per-frame"):
        story("random")
    with pytest.raises(SettingsError, match=r"seed_policy 'often' \(from the command line\) is not a seed policy"):
        plan_run(story(), "vanilla", model=ModelSpec(source="tiny"), generation={"seed_policy": "often"})


def test_changing_the_policy_redraws_the_frames_whose_seed_changes(tmp_path):
    tiny = ModelSpec(source="tiny")
    mark_drawn(plan_run(story(), "vanilla", model=tiny, out_dir=tmp_path))
    again = plan_run(story(), "vanilla", model=tiny, out_dir=tmp_path, generation={"seed_policy": "same"})
    assert again.generation.seed_policy == "same"
    assert again.frames_to_draw == [1, 3]  # frame 0 keeps seed 3, frame 2 its own 99
