"""``storycast train storynizor``: the accelerate training loop, its checkpoints and its export.

One loop for one CPU, one GPU or many nodes (``accelerate launch`` / ``torchrun`` start the processes;
``Accelerator`` finds them): mixed precision, gradient accumulation, clipping, optional EMA, trackers. The
data order is a seeded permutation per epoch, dealt to the processes in turn, and every random draw of a step
comes from a generator derived from (seed, step, micro-batch, process), so a resumed run continues exactly as
an uninterrupted one would (tested).

    OUT/
      storynizor.safetensors, storynizor.json   the latest export: `--set weights=OUT` draws with it
      train_settings.json                       the settings of the run (a resume must match them)
      checkpoints/step-000500/                   trainable weights, optimizer, schedule, EMA, step; and its export
      validation/step-000500.png                 validation frames, when asked
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from storycast.errors import StorycastError
from storycast.training.settings import StorynizorTrainSettings

logger = logging.getLogger(__name__)

SETTINGS_FILE = "train_settings.json"
STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
RESUME_MAY_CHANGE = ("max_steps", "checkpoint_every", "keep_checkpoints", "validation_every", "log_with")


class TrainingError(StorycastError):
    """A training run cannot start or resume."""


@dataclass
class TrainResult:
    """What a run did."""

    out: Path
    steps: int
    losses: list[dict[str, float]] = field(default_factory=list)
    """Per optimizer step of this process run (resumed runs: from the resumed step)."""


def checkpoint_dirs(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def _settings_json(settings: StorynizorTrainSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def train_storynizor(
    data: str | Path,
    out: str | Path,
    settings: StorynizorTrainSettings,
    model: Any,
    *,
    resume: str | None = None,
    progress: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train Storynizor on the data set at ``data``; checkpoints and the export go to ``out``.

    Args:
        data: A folder written by ``storycast data build``.
        out: The run's folder.
        settings: The training settings.
        model: A :class:`~storycast.models.spec.ModelSpec` of the base model (SD 1.5; the tiny preset offline).
        resume: None (a new run; ``out`` must not hold one), "latest", or a checkpoint folder.
        progress: Show a progress bar (main process).
        on_step: Called after every optimizer step with (step, loss terms) on every process.
    """
    from storycast.utils.imports import require

    require("accelerate", extra="train", purpose="training")
    require("peft", extra="train", purpose="the stage-2 LoRA")
    require("datasets", extra="train", purpose="reading data sets")
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from storycast.data.format import ShardedSets

    out = Path(out).expanduser()
    # 1. The data, checked before any model loads; sets are read from the shards as steps need them.
    sets = ShardedSets(data)
    sizes = sets.sizes()
    if settings.stage == 2:
        items: list[Any] = [k for k, size in enumerate(sizes) if size >= settings.frames]
    else:
        items = [(k, i) for k, size in enumerate(sizes) for i in range(size)]
    if not items:
        raise TrainingError(
            f"the data set {data} has no set of {settings.frames} images for stage 2 (set sizes: {sorted(set(sizes))}). "
            f"Fix: --set frames={max(2, max(sizes))} if that is enough, or build the data set with more images per "
            f"character."
        )
    read = functools.lru_cache(maxsize=16)(sets.__getitem__)
    start = _check_out(out, settings, resume)

    # 2. The processes, the models, the trained parts.
    # Without CUDA (or asked for the CPU), accelerate finds torchrun's processes only when told it runs on CPUs.
    on_cpu = str(getattr(model, "device", "auto")) == "cpu" or not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        log_with=None if settings.log_with == "none" else settings.log_with,
        project_dir=str(out),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    parts = _load_parts(settings, model, accelerator.device)
    module, frozen = parts["module"], parts["frozen"]
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=settings.optimizer.learning_rate,
        betas=(settings.optimizer.beta1, settings.optimizer.beta2),
        weight_decay=settings.optimizer.weight_decay,
    )
    from diffusers.optimization import get_scheduler

    schedule = get_scheduler(
        settings.optimizer.schedule,
        optimizer,
        num_warmup_steps=settings.optimizer.warmup_steps,
        num_training_steps=settings.max_steps,
    )
    module, optimizer, schedule = accelerator.prepare(module, optimizer, schedule)
    ema = _ema_of(module, accelerator, settings.ema_decay) if settings.ema_decay > 0 else None
    if start is not None:
        step = _load_checkpoint(start, module, optimizer, schedule, ema, accelerator)
        logger.info("resuming from %s (step %d)", start, step)
    else:
        step = 0
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / SETTINGS_FILE).write_text(json.dumps(_settings_json(settings), indent=2) + "\n")
    if accelerator.is_main_process and settings.log_with != "none":
        accelerator.init_trackers("storynizor", config=_flat(settings))

    # 3. The loop.
    from storycast.training.storynizor import group_batch, image_batch, step_generator, training_loss

    per_step = 1 if settings.stage == 2 else settings.batch_size
    result = TrainResult(out, step)
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.max_steps, initial=step, desc=f"training stage {settings.stage}", dynamic_ncols=True)
    module.train()
    while step < settings.max_steps:  # bounded: step grows by one per pass
        terms_sum: dict[str, float] = {}
        for micro in range(settings.gradient_accumulation_steps):
            generator = step_generator(settings.seed, step, micro, accelerator.process_index)
            picked = _pick(items, per_step, settings, step, micro, accelerator)
            if settings.stage == 2:
                batch = group_batch(read(picked[0]), settings, generator)
            else:
                batch = image_batch([(read(k), i) for k, i in picked], settings, generator)
            with accelerator.accumulate(module):
                loss, terms = training_loss(module, frozen, batch, settings, generator, accelerator.device)
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.optimizer.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, settings.optimizer.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in terms.items():
                terms_sum[key] = terms_sum.get(key, 0.0) + value / settings.gradient_accumulation_steps
        if ema is not None:
            ema.update(module)
        step += 1
        result.losses.append(terms_sum)
        result.steps = step
        if on_step is not None:
            on_step(step, terms_sum)
        if settings.log_with != "none":
            accelerator.log({**terms_sum, "lr": schedule.get_last_lr()[0]}, step=step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{terms_sum['loss']:.4f}")
        if step % settings.checkpoint_every == 0 or step == settings.max_steps:
            _save_checkpoint(out, step, module, optimizer, schedule, ema, settings, accelerator, parts)
        if settings.validation_every and step % settings.validation_every == 0 and accelerator.is_main_process:
            _validate(out, step, parts, read(items[0] if settings.stage == 2 else items[0][0]), accelerator)
    if bar is not None:
        bar.close()
    accelerator.wait_for_everyone()
    if settings.log_with != "none":
        accelerator.end_training()
    return result


def _check_out(out: Path, settings: StorynizorTrainSettings, resume: str | None) -> Path | None:
    """The checkpoint to resume from (None: a new run), or an error that keeps the folder as it is."""
    saved = out / SETTINGS_FILE
    if resume is None:
        if saved.is_file() or checkpoint_dirs(out):
            raise TrainingError(
                f"'{out}' already holds a training run. Fix: --resume to continue it, or another --out (nothing "
                f"in it is changed)."
            )
        return None
    if resume == "latest":
        found = checkpoint_dirs(out)
        if not found:
            raise TrainingError(f"'{out}' has no checkpoint to resume. Fix: train without --resume first.")
        checkpoint = found[-1]
    else:
        checkpoint = Path(resume).expanduser()
        if not (checkpoint / STATE_FILE).is_file():
            raise TrainingError(f"'{checkpoint}' is not a checkpoint folder (no {STATE_FILE}). Fix: --resume latest.")
    if saved.is_file():
        before = json.loads(saved.read_text())
        now = _settings_json(settings)
        changed = sorted(
            key for key in set(before) | set(now) if key not in RESUME_MAY_CHANGE and before.get(key) != now.get(key)
        )
        if changed:
            raise TrainingError(
                f"the run in '{out}' was trained with other settings ({', '.join(changed)}). Fix: resume with the "
                f"same settings (only {', '.join(RESUME_MAY_CHANGE)} may change), or start a new run elsewhere."
            )
    return checkpoint


def _pick(
    items: list[Any], count: int, settings: StorynizorTrainSettings, step: int, micro: int, accelerator: Any
) -> list[Any]:
    """The items of one micro-batch of this process: a seeded permutation per epoch, dealt in turn."""
    world, rank = accelerator.num_processes, accelerator.process_index
    first = ((step * settings.gradient_accumulation_steps + micro) * world + rank) * count
    picked = []
    for position in range(first, first + count):
        epoch, index = divmod(position, len(items))
        picked.append(items[int(_epoch_order(len(items), settings.seed, epoch)[index])])
    return picked


@functools.lru_cache(maxsize=2)
def _epoch_order(items: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch (drawn once per epoch, not once per sample)."""
    return torch.randperm(items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def _load_parts(settings: StorynizorTrainSettings, spec: Any, device: Any) -> dict[str, Any]:
    """The base model, the ID-Injector (from ``settings.init``), the image encoder and the trained module."""
    from diffusers import DDPMScheduler

    from storycast.adapters.id_injector import AttachedInjector, attach_id_injector
    from storycast.identity.id_injector import InjectorConfig, add_storynizor_lora
    from storycast.models.loading import load_models
    from storycast.models.presets import PLUS_FACE_WEIGHTS
    from storycast.training.storynizor import FrozenParts, StorynizorTrainable

    models = load_models(dataclasses.replace(spec, device=str(device), dtype="fp32"))
    pipe = models.pipeline
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if part is not None:
            part.requires_grad_(False)
    if settings.init == "scratch":
        from storycast.identity.id_injector import IDInjector
        from storycast.identity.resampler import ResamplerConfig

        encoder = attach_id_injector(
            models, "auto", settings.image_encoder, auto_weights=PLUS_FACE_WEIGHTS[models.family]
        ).image_encoder
        width = pipe.unet.config.cross_attention_dim
        geometry = ResamplerConfig(
            dim=width, heads=max(1, width // 64), embedding_dim=encoder.config.hidden_size, output_dim=width
        )
        injector = IDInjector.for_unet(pipe.unet, InjectorConfig(geometry, family=models.family)).to(device)
    else:
        weights = "auto" if settings.init == "ip-adapter-plus-face" else settings.init
        attached = attach_id_injector(
            models, weights, settings.image_encoder, auto_weights=PLUS_FACE_WEIGHTS[models.family]
        )
        injector, encoder = attached.injector, attached.image_encoder
        if attached.lora:  # continuing from a stage-2 checkpoint: its LoRA is the one trained on
            attached.lora = False
    injector.requires_grad_(True)
    encoder.requires_grad_(False)
    lora = None
    if settings.stage == 2:
        from storycast.identity.id_injector import LORA_ADAPTER

        if LORA_ADAPTER not in (getattr(pipe.unet, "peft_config", None) or {}):
            from storycast.utils.torch_utils import seeded

            with seeded(settings.seed):  # peft draws the initial lora_A from the global generator
                add_storynizor_lora(pipe.unet, settings.lora_rank, settings.lora_alpha)
        pipe.unet.set_adapters([LORA_ADAPTER], [1.0])
        for name, parameter in pipe.unet.named_parameters():
            parameter.requires_grad_("lora_" in name and LORA_ADAPTER in name)
        lora = {"rank": settings.lora_rank, "alpha": settings.lora_alpha}
    injector.config = dataclasses.replace(
        injector.config,
        family=models.family,
        image_encoder=None if settings.image_encoder == "auto" else settings.image_encoder,
        extra={**dict(injector.config.extra), **({"lora": lora} if lora else {}), "stage": settings.stage},
    )
    frozen = FrozenParts(
        pipe.vae, models.backbone, pipe.tokenizer, encoder, DDPMScheduler.from_config(pipe.scheduler.config)
    )
    module = StorynizorTrainable(pipe.unet, injector, amsa=settings.amsa)
    models.attachments[("id-injector", f"<training>|{settings.image_encoder}")] = AttachedInjector(
        injector, encoder, "the run being trained", models, ("id-injector", f"<training>|{settings.image_encoder}")
    )
    return {"module": module, "frozen": frozen, "models": models, "injector": injector, "settings": settings}


# -- checkpoints ----------------------------------------------------------------------------------------------


def _trainable_state(module: Any, accelerator: Any) -> dict[str, torch.Tensor]:
    unwrapped = accelerator.unwrap_model(module)
    return {name: p.detach().cpu().clone() for name, p in unwrapped.named_parameters() if p.requires_grad}


class _Ema:
    """An exponential moving average of the trained parameters."""

    def __init__(self, state: dict[str, torch.Tensor], decay: float):
        self.state = state
        self.decay = decay
        self.accelerator: Any = None

    def update(self, module: Any) -> None:
        current = _trainable_state(module, self.accelerator)
        for name, value in current.items():
            self.state[name].mul_(self.decay).add_(value, alpha=1 - self.decay)


def _ema_of(module: Any, accelerator: Any, decay: float) -> _Ema:
    ema = _Ema(_trainable_state(module, accelerator), decay)
    ema.accelerator = accelerator
    return ema


def _save_checkpoint(
    out: Path,
    step: int,
    module: Any,
    optimizer: Any,
    schedule: Any,
    ema: _Ema | None,
    settings: StorynizorTrainSettings,
    accelerator: Any,
    parts: dict[str, Any],
) -> None:
    from safetensors.torch import save_file

    from storycast.utils.io import atomic_directory, atomic_write_json

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    target = out / CHECKPOINTS / f"step-{step:06d}"
    if target.exists():
        shutil.rmtree(target)
    state = _trainable_state(module, accelerator)
    with atomic_directory(target) as staging:
        save_file(state, str(staging / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(schedule.state_dict(), staging / "schedule.pt")
        if ema is not None:
            save_file(ema.state, str(staging / "ema.safetensors"))
        (staging / STATE_FILE).write_text(json.dumps({"step": step}) + "\n")
    _export(target / "storynizor", state if ema is None else ema.state, parts)
    _export(out, state if ema is None else ema.state, parts, files_only=True)
    atomic_write_json(out / "latest.json", {"step": step, "checkpoint": str(target.relative_to(out))})
    kept = checkpoint_dirs(out)
    if settings.keep_checkpoints:
        for old in kept[: -settings.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


def _export(folder: Path, state: dict[str, torch.Tensor], parts: dict[str, Any], files_only: bool = False) -> None:
    """Our checkpoint format (``storynizor.safetensors`` + JSON) from the trained tensors of ``state``."""
    import copy

    from storycast.identity.id_injector import LORA_ADAPTER, save_injector

    injector = copy.deepcopy(parts["injector"]).cpu()
    own = {name[len("injector.") :]: value for name, value in state.items() if name.startswith("injector.")}
    injector.load_state_dict({**injector.state_dict(), **own})
    lora = {}
    for name, value in state.items():
        if name.startswith("unet.") and "lora_" in name:
            key = name[len("unet.") :].replace(f".{LORA_ADAPTER}.", ".")
            lora[key] = value
    if not files_only:
        save_injector(injector, folder, lora or None)
        return
    # The run's root holds other things: write the two files through a staging folder, then move them in.
    staging = folder / ".export"
    shutil.rmtree(staging, ignore_errors=True)
    save_injector(injector, staging, lora or None)
    for item in staging.iterdir():
        item.replace(folder / item.name)
    staging.rmdir()


def _load_checkpoint(
    checkpoint: Path, module: Any, optimizer: Any, schedule: Any, ema: _Ema | None, accelerator: Any
) -> int:
    from safetensors.torch import load_file

    unwrapped = accelerator.unwrap_model(module)
    state = _read_checkpoint_file(checkpoint / "trainable.safetensors", lambda path: load_file(str(path)))
    expected = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise TrainingError(
            f"the checkpoint {checkpoint} trains other parameters than this run ({len(set(state) ^ expected)} differ). "
            f"Fix: resume with the settings it was made with."
        )
    step = _read_checkpoint_file(checkpoint / STATE_FILE, _read_step)
    # weights_only: a checkpoint is data, never code (a pickled object in optimizer.pt would otherwise run).
    for name, target in (("optimizer.pt", optimizer), ("schedule.pt", schedule)):
        saved = _read_checkpoint_file(
            checkpoint / name, lambda path: torch.load(path, map_location="cpu", weights_only=True)
        )
        try:
            target.load_state_dict(saved)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise _damaged(checkpoint / name, f"it does not fit this run's {name[:-3]} ({err})") from None
    unwrapped.load_state_dict(state, strict=False)
    if ema is not None and (checkpoint / "ema.safetensors").is_file():
        ema.state = _read_checkpoint_file(checkpoint / "ema.safetensors", lambda path: load_file(str(path)))
    return step


def _read_step(path: Path) -> int:
    step = json.loads(path.read_text(encoding="utf-8"))["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"'step' is {step!r}, not a step number")
    return step


def _read_checkpoint_file(path: Path, read: Any) -> Any:
    """``read(path)``, with every way the file can be missing or damaged turned into one clear error."""
    if not path.is_file():
        raise _damaged(path, "it is missing")
    try:
        return read(path)
    except Exception as err:  # safetensors, pickle, JSON and OS errors all mean the same thing here
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):
            reason = "it holds objects other than tensors and plain data, which storycast does not load"
        raise _damaged(path, reason) from None


def _damaged(path: Path, reason: str) -> TrainingError:
    return TrainingError(
        f"cannot resume from {path.parent}: {path.name} is unusable ({reason}). Fix: resume from another checkpoint "
        f"(the run folder keeps the last ones), or start again without --resume."
    )


def _flat(settings: StorynizorTrainSettings) -> dict[str, Any]:
    return {leaf.flat: value for leaf, value in zip(settings.leaves(), _leaf_values(settings), strict=True)}


def _leaf_values(settings: Any) -> list[Any]:
    values = []
    for leaf in settings.leaves():
        value: Any = settings
        for part in leaf.path:
            value = getattr(value, part)
        values.append(value)
    return values


def _validate(out: Path, step: int, parts: dict[str, Any], row: Any, accelerator: Any) -> None:
    """Draw the first set's captions as a story with the weights being trained; save the frames as one sheet."""
    import tempfile

    from diffusers.utils import make_image_grid

    from storycast.methods.base import RunContext
    from storycast.methods.storynizor.method import StorynizorMethod
    from storycast.runs.plan import plan_run
    from storycast.story.parse import parse_story

    settings: StorynizorTrainSettings = parts["settings"]
    with tempfile.TemporaryDirectory() as folder:
        reference = Path(folder) / "reference.png"
        row.images[0].save(reference)
        story = parse_story(
            {
                "title": "validation",
                "characters": [
                    {"id": cid, "description": f"a {word}", "class_word": word, "references": [str(reference)]}
                    for cid, word in row.characters[:1]
                ],
                "frames": [{"text": caption, "characters": [row.characters[0][0]]} for caption in row.captions[:4]],
            }
        )
        models = parts["models"]
        module = accelerator.unwrap_model(parts["module"])
        module.eval()
        plan = plan_run(
            story,
            "storynizor",
            model=models,
            method_settings={"weights": "<training>", "image_encoder": settings.image_encoder, "anchors": "0"},
            generation={"width": settings.resolution, "height": settings.resolution},
        )
        method = StorynizorMethod(models, plan.settings)
        with torch.no_grad():
            method.prepare(plan.story, RunContext())
            images = [r.image for g in plan.groups for r in method.generate(plan.story, g.frames, RunContext())]
        module.train()
    target = out / "validation" / f"step-{step:06d}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(images, rows=1, cols=len(images)).save(target)
    if settings.log_with != "none":
        import numpy as np

        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images(
                    "validation", np.stack([np.asarray(i) for i in images]), step, dataformats="NHWC"
                )
