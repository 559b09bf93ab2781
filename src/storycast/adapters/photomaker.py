"""PhotoMaker (v1 or v2, as its weights are) attached to loaded SDXL models, shared by the methods that read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storycast.settings import MethodSettings, setting

if TYPE_CHECKING:
    from storycast.identity.photomaker_adapter import PhotoMakerAdapter
    from storycast.models.loading import LoadedModels

# As storycast.identity.photomaker_loading names them; written again here so that the settings (read when a run
# is planned) do not import torch.
PHOTOMAKER_REPO = "TencentARC/PhotoMaker"
PHOTOMAKER_V2_REPO = "TencentARC/PhotoMaker-V2"
PHOTOMAKER_V1_FILE = "photomaker-v1.bin"
PHOTOMAKER_V2_FILE = "photomaker-v2.bin"


@dataclass(frozen=True)
class PhotoMakerSettings(MethodSettings):
    """PhotoMaker (identity conditioning through the class word's token): v1, or v2 where a method reads it."""

    source: str = setting(
        "auto",
        f"PhotoMaker weights: a Hub id, folder or file. 'auto': {PHOTOMAKER_REPO} ({PHOTOMAKER_V2_REPO} when the "
        f"file is {PHOTOMAKER_V2_FILE}), or random weights of the same architecture for the tiny and random-weight "
        "presets.",
        flat="photomaker",
    )
    file: str = setting(
        PHOTOMAKER_V1_FILE,
        f"File name inside a Hub repo or folder: {PHOTOMAKER_V1_FILE} (v1) or {PHOTOMAKER_V2_FILE} (v2; with "
        f"photomaker={PHOTOMAKER_V2_REPO} or auto). The version used is the file's, read from its keys.",
        flat="photomaker_file",
    )

    def validate(self) -> None:
        from storycast.errors import SettingsError

        official = {PHOTOMAKER_REPO.lower(): PHOTOMAKER_V1_FILE, PHOTOMAKER_V2_REPO.lower(): PHOTOMAKER_V2_FILE}
        expected = official.get(self.source.lower())
        if expected is not None and self.file in (PHOTOMAKER_V1_FILE, PHOTOMAKER_V2_FILE) and self.file != expected:
            right_repo = PHOTOMAKER_V2_REPO if self.file == PHOTOMAKER_V2_FILE else PHOTOMAKER_REPO
            raise SettingsError(
                f"photomaker={self.source} holds {expected}, not {self.file}. Fix: --set photomaker={right_repo} "
                f"(or auto) for {self.file}, or --set photomaker_file={expected}."
            )

    def expected_version(self) -> str:
        """The version these settings name, before anything is loaded: "v2" when the file (or a file given as
        ``source``) is named like ``photomaker-v2``, else "v1". What loads decides (its keys); methods check
        again then."""
        import re
        from pathlib import PurePath

        source = PurePath(self.source)
        name = source.name if source.suffix in (".bin", ".safetensors") else self.file
        return "v2" if re.search(r"v2", PurePath(name).stem, flags=re.IGNORECASE) else "v1"

    def location(self) -> str:
        """Where the weights come from for real presets: ``source``, or for 'auto' the official repo of the file."""
        if self.source != "auto":
            return self.source
        return PHOTOMAKER_V2_REPO if self.expected_version() == "v2" else PHOTOMAKER_REPO


def attach_photomaker(
    models: LoadedModels, settings: PhotoMakerSettings, *, versions: tuple[str, ...] = ("v1",)
) -> PhotoMakerAdapter:
    """PhotoMaker on ``models`` (SDXL), loaded on first use and shared by every method on these models.

    ``versions`` are the PhotoMaker versions the calling method reads (only ``photomaker`` reads v2); the tiny and
    random-weight presets get random weights of the version the settings name (:meth:`PhotoMakerSettings.
    expected_version`).

    Raises:
        ModelLoadError: The loaded weights are of a version the method does not read.
    """
    from storycast.identity.photomaker_adapter import PhotoMakerAdapter
    from storycast.models.loading import active_loras

    key = ("photomaker", f"{settings.source}:{settings.file}")
    if key in models.attachments:
        return _check_version(models.attachments[key], settings, versions)
    pipe = models.pipeline
    facts = models.facts
    if settings.source == "auto" and (facts.tiny or facts.random):
        from storycast.adapters.tiny import tiny_photomaker_v2_weights, tiny_photomaker_weights
        from storycast.identity.photomaker import PhotoMakerConfig
        from storycast.identity.photomaker_v2 import PhotoMakerV2Config

        # Random weights for random models: the tiny encoder, or the full-size one for the full-size random
        # presets that benchmarks measure (LoRA rank 64: the official file's size fits that rank).
        v2 = settings.expected_version() == "v2"
        kind = PhotoMakerV2Config if v2 else PhotoMakerConfig
        config = kind.tiny() if facts.tiny else kind.vit_l14()
        rank = 4 if facts.tiny else 64
        build = tiny_photomaker_v2_weights if v2 else tiny_photomaker_weights
        weights = build(pipe.unet, seed=models.spec.seed, rank=rank, config=config)
        adapter = PhotoMakerAdapter.load(
            pipe, weights, config=config, base_adapters=active_loras(models), device=models.device,
            vision_device=models.aux_device,
        )  # fmt: skip
    else:
        adapter = PhotoMakerAdapter.load(
            pipe,
            settings.location(),
            weight_name=settings.file,
            local_files_only=models.spec.local_files_only,
            base_adapters=active_loras(models),
            device=models.device,
            vision_device=models.aux_device,
        )
    models.attachments[key] = adapter
    return _check_version(adapter, settings, versions)


def _check_version(adapter: PhotoMakerAdapter, settings: PhotoMakerSettings, versions: tuple[str, ...]) -> Any:
    if adapter.version in versions:
        return adapter
    from storycast.errors import ModelLoadError

    raise ModelLoadError(
        f"the PhotoMaker weights '{settings.location()}' ({settings.file}) are PhotoMaker {adapter.version}, and this "
        f"method reads PhotoMaker {' or '.join(versions)} only. Fix: --set photomaker_file={PHOTOMAKER_V1_FILE} "
        f"--set photomaker=auto (or {PHOTOMAKER_REPO}); PhotoMaker v2 is read by --method photomaker."
    )
