from __future__ import annotations

import subprocess
import sys


def test_import_is_light_and_quiet():
    code = (
        "import sys, storycast, storycast.errors, storycast.story.model\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
    assert result.stderr == ""


def test_lazy_public_names():
    import storycast

    assert storycast.load_story.__name__ == "load_story"
    assert storycast.get_method("vanilla").name == "vanilla"
