from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from storycast.errors import SettingsError
from storycast.methods.settings import MethodSettings


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
