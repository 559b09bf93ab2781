from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import torch

from storycast.errors import ModelLoadError
from storycast.models.loading import load_models, models_from_pipeline
from storycast.models.spec import ModelSpec
from storycast.models.tiny import tiny_components, tiny_pipeline
from storycast.runs.plan import plan_run
from storycast.story.parse import parse_story
from tests.helpers import small_story_data


@contextlib.contextmanager
def library_warnings(*names: str) -> Iterator[list[logging.LogRecord]]:
    """Warnings logged under the ``diffusers`` logger (which does not propagate to the root, so caplog misses it)
    and the other named loggers, at warning verbosity whatever the environment set."""
    from diffusers.utils import logging as diffusers_logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("diffusers", *names)]
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)


def test_library_warnings_sees_the_cast_warning(tiny_sd15):
    with library_warnings() as seen:
        tiny_sd15.pipeline.vae.to(dtype=torch.float32)  # what loading used to do: warns even for a no-op cast
    assert any("should be kept in float32" in r.getMessage() for r in seen)


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_a_user_pipeline_gives_family_device_dtype_and_facts(family):
    pipe = tiny_pipeline(family)
    models = models_from_pipeline(pipe)
    assert models.pipeline is pipe
    assert (models.family, models.device, models.dtype) == (family, "cpu", torch.float32)
    assert models.info["kind"] == "pipeline" and models.info["pipeline_class"] == type(pipe).__name__
    assert models.info["source"] == "pipeline" and models.spec.family == family
    facts = models.facts
    assert (facts.family, facts.tiny, facts.random) == (family, False, False)
    assert facts.identity["source"] == "pipeline" and facts.identity["dtype"] == "fp32"
    assert models.defaults.width == (1024 if family == "sdxl" else 512)
    plan = plan_run(parse_story(small_story_data(2)), "vanilla", model=models)
    assert plan.model.identity["family"] == family and plan.frames_to_draw == [0, 1]


def test_source_defaults_to_where_the_pipeline_was_loaded_from(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    tiny_sdxl.pipeline.save_pretrained(tmp_path / "pipe")
    loaded = StableDiffusionXLPipeline.from_pretrained(tmp_path / "pipe")
    assert models_from_pipeline(loaded).info["source"] == str(tmp_path / "pipe")
    named = models_from_pipeline(loaded, source="my-finetune")
    assert named.facts.identity["source"] == "my-finetune" and named.spec.source == "my-finetune"


def test_dtype_is_read_from_the_pipeline_and_the_tiny_cast_is_quiet():
    with library_warnings() as seen:
        cast = load_models(ModelSpec(source="tiny-sd15", device="cpu", dtype="bf16"))
    assert not seen
    assert {c.dtype for c in cast.pipeline.components.values() if isinstance(c, torch.nn.Module)} == {torch.bfloat16}
    models = models_from_pipeline(cast.pipeline)
    assert models.dtype == torch.bfloat16 and models.info["dtype"] == "bf16" and models.spec.dtype == "bf16"


def test_an_img2img_pipeline_is_rewrapped_over_the_same_models():
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    img2img = StableDiffusionImg2ImgPipeline(**tiny_components("sd15"))
    models = models_from_pipeline(img2img)
    assert type(models.pipeline) is StableDiffusionPipeline and models.family == "sd15"
    assert models.pipeline.unet is img2img.unet and models.pipeline.vae is img2img.vae


def test_a_pipeline_of_another_kind_is_refused():
    class StableDiffusion3Pipeline:
        pass

    with pytest.raises(
        ModelLoadError, match=r"StableDiffusion3Pipeline is not a pipeline storycast runs\. Fix: pass a "
    ):
        models_from_pipeline(StableDiffusion3Pipeline())
