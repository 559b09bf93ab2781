"""A method's settings as form fields: the help of `storycast methods NAME`, and overrides the planner takes."""

from __future__ import annotations

import pytest

from storycast.app.folders import AppFolders
from storycast.app.method_form import field_spec, main_fields, overrides, overrides_of_run, settings_help
from storycast.app.story_form import CharacterFields, StoryFields, build_document, check_document
from storycast.errors import SettingsError
from storycast.methods.registry import get_method, list_methods
from storycast.models.spec import ModelSpec
from storycast.runs.plan import plan_run


def test_every_method_s_own_settings_become_fields_with_their_help():
    for name in list_methods():
        settings_class = get_method(name).settings_class
        own = [leaf for leaf in settings_class.leaves() if len(leaf.path) == 1]
        fields = main_fields(settings_class)
        assert [f.name for f in fields] == [leaf.flat for leaf in own]
        assert [f.help for f in fields] == [leaf.help for leaf in own]


def test_field_kinds_follow_the_setting_types():
    settings_class = get_method("storydiffusion").settings_class
    kinds = {f.name: f for f in main_fields(settings_class)}
    # bool | None and Literal | None ("none": automatic, decided per model family) are dropdowns, "none" first.
    assert kinds["freeu"].kind == "dropdown" and kinds["freeu"].choices == ("none", "true", "false")
    assert kinds["freeu"].value == "none"
    assert kinds["scheduler"].kind == "dropdown" and kinds["scheduler"].choices[0] == "none"
    assert "ddim" in kinds["scheduler"].choices
    plain_bool = get_method("storynizor").settings_class.names()["injector.masked"]
    assert field_spec(plain_bool).kind == "checkbox"
    assert kinds["id_length"].kind == "number" and kinds["id_length"].integer
    assert kinds["style_strength"].kind == "number" and not kinds["style_strength"].integer
    automatic = get_method("identitystory").settings_class.names()["sweet_spot_step"]  # int | None = None
    assert field_spec(automatic).kind == "text" and field_spec(automatic).value == "none"


def test_the_help_lists_every_setting_as_the_cli_does(capsys):
    from storycast.cli.methods import print_settings

    settings_class = get_method("storydiffusion").settings_class
    text = settings_help(settings_class)
    print_settings(settings_class)
    printed = capsys.readouterr().out
    for leaf in settings_class.leaves():
        assert f"`{leaf.flat} = {leaf.default!r}`" in text
        assert f"{leaf.flat} = {leaf.default!r}" in printed
    assert "**attention**" in text
    assert "No settings" in settings_help(get_method("vanilla").settings_class)


def test_overrides_hold_changed_fields_and_more_settings_lines():
    settings_class = get_method("storydiffusion").settings_class
    got = overrides(settings_class, {"freeu": "none", "id_length": 2, "scheduler": "none"}, "sa32=0.4\n# a note\n\n")
    assert got == {"id_length": 2, "sa32": "0.4"}
    with pytest.raises(SettingsError, match="not KEY=VALUE"):
        overrides(settings_class, {}, "sa32 0.4")
    with pytest.raises(SettingsError, match="set above too"):
        overrides(settings_class, {"id_length": 3}, "id_length=2")


def _story(folders):
    fields = StoryFields(
        title="t",
        characters=[CharacterFields(id="mara", description="a young woman", class_word="woman")],
        frames="{mara} reading\n{mara} swimming",
        settings={"width": "64", "height": "64", "steps": "2"},
    )
    return check_document(build_document(fields), folders)


def test_a_bad_value_is_the_planner_s_error_naming_the_setting(tmp_path):
    story = _story(AppFolders.create(tmp_path))
    spec = ModelSpec(source="tiny", device="cpu")
    settings_class = get_method("storydiffusion").settings_class
    with pytest.raises(SettingsError, match="sa32"):
        plan_run(story, "storydiffusion", model=spec, method_settings=overrides(settings_class, {}, "sa32=lots"))
    with pytest.raises(SettingsError, match="did you mean 'sa32'"):
        plan_run(story, "storydiffusion", model=spec, method_settings=overrides(settings_class, {}, "sa23=0.5"))


def test_a_run_s_recorded_settings_plan_the_same_run_again(tmp_path):
    story = _story(AppFolders.create(tmp_path))
    spec = ModelSpec(source="tiny", device="cpu")
    settings_class = get_method("storydiffusion").settings_class
    asked = overrides(settings_class, {"id_length": 2, "freeu": "false"}, "sa32=0.25\nplain_steps=2")
    first = plan_run(story, "storydiffusion", model=spec, method_settings=asked)
    fields, more = overrides_of_run(settings_class, first.settings.to_dict())
    assert fields["id_length"] == 2 and fields["freeu"] == "false"  # the dropdown's spelling
    again = plan_run(story, "storydiffusion", model=spec, method_settings=overrides(settings_class, fields, more))
    assert again.run_key == first.run_key
    default = plan_run(story, "storydiffusion", model=spec)
    assert default.run_key != first.run_key


def test_the_presets_offered_are_those_of_the_method_s_families():
    from storycast.app.method_form import presets_for

    offered, selected = presets_for(get_method("identitystory").families, "tiny-flux")
    assert {"sdxl", "tiny", "flux-dev", "tiny-flux"} <= set(offered) and selected == "tiny-flux"
    offered, selected = presets_for(get_method("storynizor").families, "flux-dev")
    assert not any(name.startswith(("flux", "tiny-flux")) for name in offered) and selected == offered[0]
