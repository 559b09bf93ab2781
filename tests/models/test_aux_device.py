"""``--aux-device``: auxiliary models (masks, PhotoMaker's vision tower, a benchmark's extractors) on a device of
their own, and a device that does not exist refused before anything loads."""

from __future__ import annotations

import pytest
import torch

from storycast.cli.main import main
from storycast.errors import SettingsError
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.runs.plan import plan_run
from storycast.story.parse import parse_story
from storycast.utils.torch_utils import resolve_device
from tests.methods.helpers import two_friends


def test_a_cuda_device_that_is_not_there_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(SettingsError, match=r"'cuda:2' does not exist: this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    with pytest.raises(SettingsError, match="does not exist"):
        resolve_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_aux_device_that_is_not_there_fails_before_any_model_loads(tmp_path, capsys):
    with pytest.raises(SettingsError, match="CUDA is not available"):
        plan_run(parse_story(two_friends()), "vanilla", model=ModelSpec(source="tiny", aux_device="cuda:1"))
    story = tmp_path / "story.json"
    story.write_text('{"prompts": ["a photo of a dog"], "token": "dog", "character": "dog", "settings": ["x"]}')
    code = main(["generate", str(story), "--preset", "tiny", "--aux-device", "cuda:1", "--out", str(tmp_path / "o")])
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_auxiliary_models_are_built_on_the_aux_device(monkeypatch):
    from storycast.methods.identitystory import method as identitystory

    default = load_models(ModelSpec(source="tiny", device="cpu"))
    assert default.aux_device == "cpu" == default.device
    models = load_models(ModelSpec(source="tiny", device="cpu", aux_device="cpu"))
    assert models.aux_device == "cpu"
    # A machine with a second device: the method must ask for the aux device, not the model's.
    monkeypatch.setattr(type(models), "aux_device", property(lambda self: "the-aux-device"))
    asked = {}

    def build_provider(name, settings, *, device, local_files_only, offload_idle=False):
        asked[name] = device
        return object()

    monkeypatch.setattr(identitystory, "build_provider", build_provider)
    identitystory.IdentityStoryMethod(models).mask_provider("grounded-sam")
    assert asked == {"grounded-sam": "the-aux-device"}


def test_image_encoders_live_on_the_aux_device_and_give_embeddings_on_the_models_device():
    from PIL import Image

    from storycast.adapters.ip_adapter import IPAdapterSettings, attach_ip_adapter
    from storycast.adapters.photomaker import PhotoMakerSettings, attach_photomaker

    models = load_models(ModelSpec(source="tiny", device="cpu", aux_device="cpu"))
    photomaker = attach_photomaker(models, PhotoMakerSettings())
    assert photomaker.vision_device == models.aux_device
    assert next(photomaker.encoder.vision_model.parameters()).device.type == "cpu"
    image = Image.new("RGB", (64, 64), (90, 40, 200))
    assert photomaker.embed([image]).device.type == torch.device(models.device).type
    ip_adapter = attach_ip_adapter(models, IPAdapterSettings())
    assert next(ip_adapter.image_encoder.parameters()).device.type == "cpu"
    assert ip_adapter.embed([image]).device.type == torch.device(models.device).type
