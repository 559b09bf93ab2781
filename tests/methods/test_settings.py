from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from storycast.errors import SettingsError
from storycast.settings import MethodSettings


@dataclass(frozen=True)
class ExampleSettings(MethodSettings):
    """Settings used to test parsing.

    Attributes:
        strength: How strong.
        steps: How many.
        provider: Which one.
        enabled: On or off.
        scales: Per-level values.
        label: Optional text.
    """

    strength: float = 1.0
    steps: int = 10
    provider: Literal["auto", "attention", "user"] = "auto"
    enabled: bool = True
    scales: tuple[float, ...] = (1.0, 0.5)
    label: str | None = None

    def validate(self) -> None:
        if self.steps < 1:
            raise SettingsError(f"steps must be at least 1, got {self.steps}. Fix: use 1 or more.")


def test_defaults_and_strings_from_the_command_line():
    settings = ExampleSettings.from_mapping(
        {"strength": "0.5", "steps": "3", "provider": "user", "enabled": "no", "scales": "1, 2", "label": "none"}
    )
    assert settings == ExampleSettings(0.5, 3, "user", False, (1.0, 2.0), None)
    assert ExampleSettings.from_mapping(None) == ExampleSettings()


def test_dashes_are_accepted_in_names():
    assert ExampleSettings.from_mapping({"steps": 2}).steps == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strenght": 1}, "did you mean 'strength'"),
        ({"steps": "many"}, "whole number"),
        ({"steps": 1.5}, "whole number"),
        ({"enabled": "maybe"}, "true or false"),
        ({"provider": "sam"}, "one of auto, attention, user"),
        ({"steps": 0}, "at least 1"),
    ],
)
def test_errors_name_the_setting(values, message):
    with pytest.raises(SettingsError) as info:
        ExampleSettings.from_mapping(values, where="story.yaml: methods.example")
    assert message in str(info.value)
    assert "story.yaml: methods.example" in str(info.value)


def test_round_trip_through_dict():
    settings = ExampleSettings(strength=2.0)
    assert ExampleSettings.from_mapping(settings.to_dict()) == settings


def test_nested_settings_take_flat_dotted_and_nested_names():
    from storycast.methods.identitystory.settings import IdentityStorySettings

    flat = IdentityStorySettings.from_mapping({"discovery_candidates": "32", "mask_provider": "attention"})
    dotted = IdentityStorySettings.from_mapping({"discovery.candidates": 32, "masks.provider": "attention"})
    nested = IdentityStorySettings.from_mapping({"discovery": {"candidates": 32}, "masks": {"provider": "attention"}})
    assert flat == dotted == nested
    assert flat.discovery.candidates == 32 and flat.masks.provider == "attention"
    assert flat.get("discovery_candidates") == 32 and flat.get(("masks", "provider")) == "attention"
    assert IdentityStorySettings.from_mapping(flat.to_dict()) == flat  # the manifest's nested form round-trips
    assert flat.flat_dict()["sweet_spot_step"] is None


def test_unknown_nested_names_get_a_did_you_mean_and_say_where_they_came_from():
    from storycast.methods.identitystory.settings import IdentityStorySettings

    with pytest.raises(
        SettingsError, match=r"--set discovery_candidate: unknown setting\. Fix: did you mean 'discovery_candidates'"
    ):
        IdentityStorySettings.from_mapping({"discovery_candidate": 3}, where="--set")
    with pytest.raises(SettingsError, match=r"story\.yaml: methods\.identitystory\.discovery\.candidats: unknown"):
        IdentityStorySettings.from_mapping({"discovery": {"candidats": 3}}, where="story.yaml: methods.identitystory")
    with pytest.raises(SettingsError, match="svd_keep_ratio must be between 0 and 1"):
        IdentityStorySettings.from_mapping({"svd_keep_ratio": "1.5"}, where="--set")
    with pytest.raises(SettingsError, match="finite number"):
        IdentityStorySettings.from_mapping({"identity_strength": "nan"}, where="--set")


def test_every_registered_method_documents_every_setting_and_its_flat_names_are_unique():
    from storycast.methods.registry import get_method, list_methods

    for name in list_methods():
        settings_class = get_method(name).settings_class
        names = settings_class.names()  # raises when a flat name collides
        for leaf in settings_class.leaves():
            assert leaf.help.strip(), f"{name}: {leaf.dotted} has no help text"
            assert names[leaf.flat] is leaf or names[leaf.flat].path == leaf.path


def test_automatic_values_are_resolved_once_for_the_run():
    from storycast.methods.identitystory.settings import IdentityStorySettings
    from storycast.settings import ResolveContext
    from storycast.story.model import GenerationSettings

    full = ResolveContext(GenerationSettings(1024, 1024, 50, 7.0), "sdxl")
    tiny = ResolveContext(GenerationSettings(128, 128, 4, 7.0), "sdxl", tiny=True)
    settings = IdentityStorySettings()
    resolved = settings.resolve(full)
    assert (resolved.discovery.candidates, resolved.discovery.svd_rank, resolved.discovery.steps) == (64, 10, 50)
    assert resolved.injection.sweet_spot_step == 10 and resolved.discovery.start_merge_step == 10
    assert resolved.masks.auto_detector is True
    small = settings.resolve(tiny)
    assert (small.discovery.candidates, small.discovery.svd_rank, small.discovery.steps) == (12, 2, 4)
    assert small.injection.sweet_spot_step == 1 and small.masks.auto_detector is False
    assert resolved.resolve(full) == resolved  # idempotent
    chosen = IdentityStorySettings.from_mapping({"sweet_spot_step": 20}).resolve(full)
    assert chosen.injection.sweet_spot_step == 20


def test_methods_registered_through_entry_points_still_import_the_framework_from_methods_settings():
    import storycast.methods.settings as old
    import storycast.settings as new

    assert old.__all__ and all(getattr(old, name) is getattr(new, name) for name in old.__all__)
    assert {"MethodSettings", "ResolveContext", "setting", "check_range"} <= set(old.__all__)
