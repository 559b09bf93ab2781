"""Shared fixtures: offline, CPU, tiny models built once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub: tests never reach the network, and the user's own
# cache and storycast cache are never touched.
_SANDBOX = Path(tempfile.mkdtemp(prefix="storycast-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SANDBOX / "hf")
os.environ["STORYCAST_CACHE"] = str(_SANDBOX / "cache")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_cpu_thread():
    """Tiny models gain nothing from intra-op threads, and lose a great deal when the cores are shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_sdxl():
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec

    return load_models(ModelSpec(source="tiny", device="cpu"))


@pytest.fixture(scope="session")
def tiny_sd15():
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec

    return load_models(ModelSpec(source="tiny-sd15", device="cpu"))


@pytest.fixture(scope="session")
def tiny_flux():
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec

    return load_models(ModelSpec(source="tiny-flux", device="cpu"))


@pytest.fixture
def write_story(tmp_path):
    """Write a YAML story document to a file and return its path."""
    import yaml

    def write(data, name: str = "story.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _plain_storycast_logger():
    """`storycast.cli.main` sets the 'storycast' logger up for a terminal (its own handler, no propagation).
    Tests, and module fixtures, that call it in-process must not hand that setup to later tests, whose caplog
    would then see nothing: every test starts with the logger as Python creates it."""
    import logging

    logger = logging.getLogger("storycast")
    logger.handlers[:] = []
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    yield
