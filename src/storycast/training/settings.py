"""Settings of ``storycast train storynizor``: a YAML config file (``--config``) and ``--set`` flags, with help.

Defaults and their sources (``docs/training.md``): IP-Adapter's training script (AdamW 1e-4, weight decay 0.01,
drop rates 0.05, 512 px), Storynizor's spec (groups of 4, LoRA rank 64 on the up-block self-attention, loss
weights 0.1 / 0.05, perceptual term at t <= 250), StoryMaker (gradient clipping 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.settings import MethodSettings, check_range, setting
from storycast.story.limits import MAX_SEED

MAX_BATCH_SIZE = 1024
"""Most images per process and step (our bound: far above what one GPU holds at 512 px, where IP-Adapter trains 8;
a larger number is a typo, refused before anything loads)."""


@dataclass(frozen=True)
class OptimizerSettings(MethodSettings):
    """AdamW and its schedule."""

    learning_rate: float = setting(1e-4, "AdamW learning rate (IP-Adapter's 1e-4).")
    weight_decay: float = setting(0.01, "AdamW weight decay (IP-Adapter's 0.01).")
    beta1: float = setting(0.9, "AdamW beta1.")
    beta2: float = setting(0.999, "AdamW beta2.")
    schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = setting(
        "constant", "Learning-rate schedule (diffusers' get_scheduler)."
    )
    warmup_steps: int = setting(0, "Warm-up steps of the schedule.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (StoryMaker's 1.0; 0: none).")

    def validate(self) -> None:
        check_range("learning_rate", self.learning_rate, 0)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("warmup_steps", self.warmup_steps, 0)
        check_range("max_grad_norm", self.max_grad_norm, 0)


@dataclass(frozen=True)
class LossSettings(MethodSettings):
    """The loss: diffusion + mask_alignment x (a) + perceptual x (b)."""

    mask_alignment: float = setting(
        0.1,
        "Weight of the attention-mask alignment term (a) (StoryMaker's --ip_loss 0.1).",
        flat="mask_alignment_weight",
    )
    perceptual: float = setting(
        0.05, "Weight of the masked perceptual consistency term (b) (the spec's 0.05).", flat="perceptual_weight"
    )
    perceptual_max_timestep: int = setting(
        250, "Term (b) only for groups at timestep <= this (StoryMaker's identity loss skips t > 250)."
    )

    def validate(self) -> None:
        check_range("mask_alignment_weight", self.mask_alignment, 0)
        check_range("perceptual_weight", self.perceptual, 0)
        check_range("perceptual_max_timestep", self.perceptual_max_timestep, 0, 1000)


@dataclass(frozen=True)
class DropSettings(MethodSettings):
    """Conditioning drop rates (IP-Adapter's, exclusive draws), for classifier-free guidance."""

    image: float = setting(0.05, "Rows that lose the image condition only.", flat="drop_image")
    text: float = setting(0.05, "Rows that lose the text only.", flat="drop_text")
    both: float = setting(0.05, "Rows that lose both.", flat="drop_both")

    def validate(self) -> None:
        for name in ("image", "text", "both"):
            check_range(f"drop_{name}", getattr(self, name), 0, 1)
        if self.image + self.text + self.both > 1:
            from storycast.errors import SettingsError

            raise SettingsError("drop_image + drop_text + drop_both must be at most 1.")


@dataclass(frozen=True)
class StorynizorTrainSettings(MethodSettings):
    """Settings of Storynizor training (``storycast train storynizor --help`` lists them)."""

    stage: Literal[1, 2] = setting(
        2,
        "1: the ID-Injector alone on single images (self-reference, strong augmentation); 2: groups with AMSA, SRS, "
        "the mask losses and a LoRA on the up-block self-attention.",
    )
    resolution: int = setting(512, "Training side in pixels (512, then 768: the spec's two passes).")
    frames: int = setting(4, "Frames per group in stage 2 (the spec's N = 4).")
    batch_size: int = setting(
        8,
        f"Images per process and step in stage 1 (IP-Adapter's 8; at most {MAX_BATCH_SIZE} and the data set's image "
        f"count); stage 2 takes one group.",
    )
    max_steps: int = setting(1000, "Optimizer steps to train (a budget: the paper's number is unknown).")
    gradient_accumulation_steps: int = setting(1, "Micro-batches per optimizer step.")
    mixed_precision: Literal["no", "fp16", "bf16"] = setting("no", "Mixed precision of the trained forward pass.")
    seed: int = setting(
        0, f"Seed of everything random: data order, frames, noise, timesteps, SRS, drops (0 to {MAX_SEED})."
    )
    init: str = setting(
        "ip-adapter-plus-face",
        "Weights the injector starts from: 'ip-adapter-plus-face' (the public SD 1.5 weights; random ones of that "
        "layout on the tiny preset), 'scratch' (resampler random, identity k/v copied from the text k/v), or a "
        "storynizor checkpoint folder or file.",
    )
    image_encoder: str = setting("auto", "CLIP image encoder (as the method's injector.image_encoder).")
    lora_rank: int = setting(64, "LoRA rank on the up-block self-attention in stage 2 (the spec's 64).")
    lora_alpha: float = setting(64.0, "LoRA alpha (= rank: scale 1).")
    srs: bool = setting(True, "Shuffling Reference Strategy in stage 2 (off: each frame its own reference; ablation).")
    amsa: bool = setting(True, "Auto-mask self-attention across the group in stage 2 (off: ablation).")
    reference_crop: Literal["mask", "whole"] = setting(
        "mask", "References cut from the training images: the character alone (its mask, background white) or whole."
    )
    noise_offset: float = setting(0.0, "Noise offset (StoryMaker's 0.05; 0: none).")
    checkpoint_every: int = setting(500, "Steps between checkpoints (optimizer, schedule, RNG, data position).")
    keep_checkpoints: int = setting(3, "Checkpoints kept (older ones deleted; 0: all).")
    validation_every: int = setting(0, "Steps between validation images (0: none).")
    log_with: Literal["none", "tensorboard", "wandb"] = setting("none", "Tracker (through accelerate).")
    ema_decay: float = setting(0.0, "EMA of the trained weights (e.g. 0.9999; 0: no EMA). The export uses the EMA.")
    optimizer: OptimizerSettings = setting(factory=OptimizerSettings, help="AdamW.")
    loss: LossSettings = setting(factory=LossSettings, help="Loss weights.")
    drop: DropSettings = setting(factory=DropSettings, help="Conditioning drop.")

    def validate(self) -> None:
        check_range("resolution", self.resolution, 64, 2048)
        if self.resolution % 64:
            from storycast.errors import SettingsError

            raise SettingsError(
                f"resolution must be a multiple of 64 (the UNet's downsampling), got {self.resolution}."
            )
        check_range("frames", self.frames, 2)
        check_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        check_range("seed", self.seed, 0, MAX_SEED)
        check_range("max_steps", self.max_steps, 1)
        check_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_range("lora_rank", self.lora_rank, 1)
        check_range("checkpoint_every", self.checkpoint_every, 1)
        check_range("keep_checkpoints", self.keep_checkpoints, 0)
        check_range("validation_every", self.validation_every, 0)
        check_range("ema_decay", self.ema_decay, 0, 1)
        check_range("noise_offset", self.noise_offset, 0)
