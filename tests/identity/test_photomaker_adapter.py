"""PhotoMaker attached to a loaded pipeline: the pipeline's tokenizers stay as they were, and detaching
removes what attaching added."""

from __future__ import annotations

import torch

from storycast.adapters.tiny import tiny_photomaker_weights
from storycast.identity.photomaker import PhotoMakerConfig
from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.models.tiny import tiny_sdxl_components


def unet_output(unet):
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(2)),
        "added_cond_kwargs": {"text_embeds": torch.zeros(2, 32), "time_ids": torch.zeros(2, 6)},
    }
    with torch.no_grad():
        return unet(x, 10, **kwargs).sample


def test_the_trigger_word_never_reaches_the_pipelines_tokenizers_and_detach_removes_the_lora():
    models = load_models(ModelSpec(source="tiny", device="cpu"))
    pipe = models.pipeline
    sizes = (len(pipe.tokenizer), len(pipe.tokenizer_2))
    adapter = PhotoMakerAdapter.load(
        pipe, tiny_photomaker_weights(pipe.unet), config=PhotoMakerConfig.tiny(), device="cpu"
    )
    assert (len(pipe.tokenizer), len(pipe.tokenizer_2)) == sizes
    assert "img" not in pipe.tokenizer.get_vocab() and "img" in adapter.trigger_tokenizer.get_vocab()
    # "img" in a base prompt is ordinary text: no id beyond the text encoder's table.
    ids = pipe.tokenizer("an img badge from imgur").input_ids
    assert max(ids) < pipe.text_encoder.config.vocab_size
    image = pipe("an img badge from imgur", num_inference_steps=1, width=64, height=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    # Identity prompts still find their class token through the adapter's own tokenizer.
    assert adapter.class_token_position("a woman img in a park") == 2

    with adapter.lora(True):
        lora_on = unet_output(pipe.unet)
    adapter.detach()
    adapter.detach()  # twice is harmless
    assert "photomaker" not in (getattr(pipe.unet, "peft_config", None) or {})
    plain = unet_output(tiny_sdxl_components()["unet"])
    torch.testing.assert_close(unet_output(pipe.unet), plain, rtol=0, atol=1e-6)
    assert (lora_on - plain).abs().max() > 1e-4


def test_attached_adapters_are_shared_and_detach_all_leaves_the_models_as_loaded():
    from storycast.adapters.base import detach_all
    from storycast.adapters.controlnet import ControlNetSettings, attach_controlnet
    from storycast.adapters.photomaker import PhotoMakerSettings, attach_photomaker

    models = load_models(ModelSpec(source="tiny", device="cpu"))
    photomaker = attach_photomaker(models, PhotoMakerSettings())  # "auto": random weights for the tiny preset
    assert attach_photomaker(models, PhotoMakerSettings()) is photomaker
    controlnet = attach_controlnet(models, "tiny")
    assert attach_controlnet(models, "tiny") is controlnet and controlnet.model is not None
    assert ControlNetSettings().source is None
    detach_all(models)
    assert models.attachments == {} and controlnet.model is None
    assert "photomaker" not in (getattr(models.pipeline.unet, "peft_config", None) or {})
    plain = unet_output(tiny_sdxl_components()["unet"])
    torch.testing.assert_close(unet_output(models.pipeline.unet), plain, rtol=0, atol=1e-6)
