from __future__ import annotations

import subprocess
import sys


def test_adapter_settings_load_without_torch():
    """Methods' settings hold the adapters' settings and are read when a run is planned, before any model."""
    code = (
        "import sys, storycast.adapters.controlnet, storycast.adapters.ip_adapter, storycast.adapters.photomaker\n"
        "print(','.join(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_photomaker_names_are_those_the_loader_knows():
    from storycast.adapters import photomaker
    from storycast.identity import photomaker_loading

    for name in ("PHOTOMAKER_REPO", "PHOTOMAKER_V2_REPO", "PHOTOMAKER_V1_FILE", "PHOTOMAKER_V2_FILE"):
        assert getattr(photomaker, name) == getattr(photomaker_loading, name)
