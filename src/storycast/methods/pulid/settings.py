"""Settings of the PuLID-FLUX baseline, with the authors' defaults (readable without torch).

Sources (ToTheBeginning/PuLID at 1aa2fc7df4bf51080df39f355f9abdc1cbfefbaa): the FLUX demo ``app_flux.py`` (its
sliders' defaults), ``flux/sampling.py`` (``denoise``: when the ID and true CFG act) and ``pulid/pipeline_flux.py``
(the intervals). ``identity`` and ``discovery`` (identities from descriptions) are our extension, shared with
``identitystory`` on FLUX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.adapters.pulid_flux import PuLIDFluxSettings
from storycast.methods.identitystory.settings import DiscoverySettings
from storycast.settings import MethodSettings, check_range, setting

PULID_NEGATIVE_PROMPT = "bad quality, worst quality, text, signature, watermark, extra limbs"
"""``app_flux.py`` line 220: the negative prompt of true CFG."""


@dataclass(frozen=True)
class PuLIDMethodSettings(MethodSettings):
    """Settings of the PuLID-FLUX baseline."""

    identity: Literal["auto", "photos", "discovered"] = setting(
        "auto",
        "Where identities come from: 'photos' (each character's reference photos, required), 'discovered' "
        "(IdentityStory's discovery from the description in PuLID's ID-token space, through the identity library: "
        "our extension, shared with identitystory runs on FLUX), 'auto' (photos when a character has them and a face "
        "is found in them, else discovered). PuLID-FLUX itself reads a photo.",
    )
    id_weight: float = setting(
        1.0, "Weight of the ID branch's term after each block (app_flux.py line 206: 1, slider 0 to 3). 0: plain FLUX."
    )
    start_step: int = setting(
        0,
        "First step the ID acts at (app_flux.py line 211, 'timestep to start inserting ID': 0; flux/sampling.py line "
        "131 `id if i >= start_step`). Their docs: 4 for photorealistic scenes, 0 to 1 for stylized ones; later is "
        "more editable and less faithful.",
    )
    true_cfg: float = setting(
        1.0,
        "PuLID's true CFG scale (app_flux.py line 221: 1, off). Above 1: a second pass on the negative prompt with "
        "the negative ID tokens, combined as neg + true_cfg x (pred - neg) (flux/sampling.py lines 136-149); their "
        "demo suggests guidance_scale 1 with it (app_flux.py line 217).",
    )
    start_cfg_step: int = setting(
        1, "First step of true CFG ('timestep_to_start_cfg', app_flux.py line 222: 1; flux/sampling.py line 136)."
    )
    negative_prompt: str = setting(
        PULID_NEGATIVE_PROMPT,
        "Negative prompt of true CFG where the story gives none (app_flux.py line 220); unused when true_cfg is 1.",
        flat="pulid_negative_prompt",
    )
    double_interval: int = setting(
        2, "A cross-attention module after every N-th double-stream block, from block 0 (pipeline_flux.py line 26)."
    )
    single_interval: int = setting(
        4, "The same after the single-stream blocks (pipeline_flux.py line 27). Must match the weights' module count."
    )
    pulid: PuLIDFluxSettings = setting(factory=PuLIDFluxSettings, help="PuLID-FLUX and EVA02-CLIP weights.")
    discovery: DiscoverySettings = setting(
        factory=DiscoverySettings,
        help="IdentityStory's discovery, for characters without photos (on FLUX: the generation's steps and guidance).",
    )
    face_models: str | None = setting(
        None,
        "Folder of the insightface antelopev2 pack (scrfd_10g_bnkps.onnx, glintr100.onnx), run with onnxruntime "
        "(default: ~/.insightface/models/antelopev2; the tiny presets write tiny random stand-ins into the cache).",
    )
    face_parsing: str | None = setting(
        None,
        "facexlib's BiSeNet weights (parsing_bisenet.pth from facexlib's release v0.2.0, or its folder): the "
        "background, neck, clothes, ears and hat of each aligned face go white before EVA-CLIP, as PuLID does "
        "(pipeline_flux.py lines 161-169). None: no parsing, the whole crop grey (a documented deviation).",
    )

    def validate(self) -> None:
        check_range("id_weight", self.id_weight, 0)
        check_range("start_step", self.start_step, 0)
        check_range("true_cfg", self.true_cfg, 1)
        check_range("start_cfg_step", self.start_cfg_step, 0)
        check_range("double_interval", self.double_interval, 1)
        check_range("single_interval", self.single_interval, 1)

    @property
    def intervals(self) -> tuple[int, int]:
        return self.double_interval, self.single_interval
