"""Does an 8-frame, 1024 px FLUX.1-dev story fit a 24 GB GPU, and with which options? The weights counted exactly,
the activations measured, the sum per configuration.

1. Weights: FLUX.1-dev's transformer (per double-stream block, per single-stream block, the rest), T5-XXL's
   encoder, CLIP-L's text tower and the VAE, built on the meta device (no memory) from FLUX.1-dev's configs with
   the real vocabularies, their parameters counted and priced per storage: bf16 (2 bytes), and for the
   transformer's linear layers torchao's weight-only layouts (``weight_bytes``: int8 and fp8 one byte per weight
   plus a float32 scale per row (int8 also an int8 zero point), int4 half a byte plus a bf16 scale and zero per
   group of 128 inputs; the int8/fp8 prices are checked against torchao's own tensors in
   tests/benchmarks/test_flux_budget.py).
2. Activations: measured on this machine's CPU with flux-random at FLUX.1's widths and a shrunk depth (the
   activations of a block are freed before the next block runs, so they do not grow with depth), each stage in a
   fresh process: one transformer evaluation of one 1024 px frame (4096 image + 512 text tokens) and the VAE's
   decode of one 1024 px frame, plain and tiled; the peak resident set above what the process held before the
   stage (Linux's VmHWM, reset before the stage). Measured in ``--dtype`` (fp32 on a CPU: the bf16 figure on a
   GPU is taken as half of it, which the GPU run must confirm).
3. Per configuration, what the GPU holds at its peak: the weights placed on it, the largest stage's activations,
   StoryDiffusion's bank where it is kept on the GPU, and ``CUDA_OVERHEAD_GB`` for the CUDA context and the
   allocator; "fits" where that is under 24 GB.

    python benchmarks/flux_budget.py --depth 1,1,1 --threads 2        # the CPU measurement and the table
    python benchmarks/flux_budget.py --skip-measure                    # the weights and the bank only
    python benchmarks/flux_budget.py --activations figures.json        # the activations of an earlier --save

On a GPU, ``python benchmarks/flux_memory.py --preset flux-random --device cuda --size 1024 --steps 28 --frames 8``
measures the same configurations directly; these figures say what it should find.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import run_worker, shrink_flux

GB = 1e9
GPU_GB = 24.0
CUDA_OVERHEAD_GB = 1.0
"""The CUDA context (about 0.5 GB with torch's kernels loaded) and the caching allocator's slack, assumed."""
INT4_GROUP = 128
T5_VOCAB = 32128
"""google/t5-v1_1-xxl's vocabulary (FLUX.1-dev text_encoder_2/config.json)."""
CLIP_VOCAB = 49408
"""openai/clip-vit-large-patch14's vocabulary (FLUX.1-dev text_encoder/config.json)."""
SIZE = 1024
STEPS = 28
CSA_LAYERS = {"single": 38, "double": 19}
"""StoryDiffusion's shared layers on FLUX.1 by ``csa_blocks`` (the single-stream blocks by default)."""
HIDDEN = 3072
"""FLUX.1's inner dimension: a banked token is a key and a value of this width."""


def weight_bytes(module, mode: str) -> int:
    """Bytes of ``module``'s parameters with its linear layers stored in ``mode`` ("bf16", "int8", "fp8",
    "int4"; torchao's weight-only layouts) and everything else in bf16."""
    import torch

    total = 0
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if isinstance(sub, torch.nn.Linear) and mode != "bf16":
            rows, inputs = sub.weight.shape
            bias = 2 * sub.bias.numel() if sub.bias is not None else 0
            if mode == "int8":
                total += rows * inputs + rows * (4 + 1) + bias  # int8 weights; float32 scale, int8 zero per row
            elif mode == "fp8":
                total += rows * inputs + rows * 4 + bias  # float8 e4m3 weights; float32 scale per row
            elif inputs % INT4_GROUP == 0:
                total += rows * inputs // 2 + rows * (inputs // INT4_GROUP) * 4 + bias  # bf16 scale and zero
            else:  # left in bf16 by --quantize int4 (storycast.models.quantization.quantizable)
                total += 2 * sum(p.numel() for p in own)
        else:
            total += 2 * sum(p.numel() for p in own)
    return total


def meta_components() -> dict:
    """FLUX.1-dev's models on the meta device, with the real vocabularies."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5EncoderModel

    from storycast.models.flux_components import CLIP_L_TEXT, flux_t5_config, flux_transformer_config, flux_vae_config

    with torch.device("meta"):
        return {
            "transformer": FluxTransformer2DModel(**flux_transformer_config("full")),
            "t5": T5EncoderModel(flux_t5_config("full", vocab_size=T5_VOCAB)),
            "clip": CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB, max_position_embeddings=77, **CLIP_L_TEXT)),
            "vae": AutoencoderKL(**flux_vae_config("full")),
        }


def weights() -> dict[str, float]:
    """GB of each part: the transformer per mode (whole, one double block, one single block, outside the blocks),
    T5, CLIP and the VAE in bf16."""
    parts = meta_components()
    transformer = parts["transformer"]
    figures: dict[str, float] = {}
    for mode in ("bf16", "int8", "fp8", "int4"):
        double = weight_bytes(transformer.transformer_blocks[0], mode)
        single = weight_bytes(transformer.single_transformer_blocks[0], mode)
        whole = weight_bytes(transformer, mode)
        figures |= {
            f"transformer {mode}": whole / GB,
            f"double block {mode}": double / GB,
            f"single block {mode}": single / GB,
            f"outside blocks {mode}": (whole - 19 * double - 38 * single) / GB,
        }
    figures |= {name: weight_bytes(parts[name], "bf16") / GB for name in ("t5", "clip", "vae")}
    return figures


def bank_bytes(
    *, rate: float, identity_frames: int, layers: int, steps: int, tokens: int, hidden: int, itemsize: int
) -> float:
    """StoryDiffusion's bank on FLUX: per identity frame, step and shared layer, the sampled image tokens' keys and
    values (``rate`` x ``tokens``, the expectation of Bernoulli sampling, exact with ``sampling=fixed``), each
    2 x ``hidden`` wide."""
    return identity_frames * steps * layers * rate * tokens * 2 * hidden * itemsize


def bank_gb(rate: float = 0.5, identity_frames: int = 1, blocks: str = "single", steps: int = STEPS) -> float:
    """The bank of FLUX.1 at 1024 px (4096 image tokens, inner dim 3072) in bf16, in GB."""
    tokens = (SIZE // 16) ** 2
    layers = CSA_LAYERS[blocks]
    kept = bank_bytes(rate=rate, identity_frames=identity_frames, layers=layers, steps=steps, tokens=tokens,
                      hidden=HIDDEN, itemsize=2)  # fmt: skip
    return kept / GB


def read_status(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def stage_worker(args: argparse.Namespace) -> dict:
    """One stage at 1024 px in this process: its peak resident set above what was held before it, in MB."""
    import torch

    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec

    torch.set_num_threads(args.threads)
    shrink_flux(args.depth)
    models = load_models(ModelSpec(source="flux-random", device="cpu", dtype=args.dtype))
    backbone = models.backbone
    latents = torch.randn(1, *backbone.latent_shape(SIZE, SIZE), dtype=backbone.dtype)
    guidance = backbone.guidance(3.5)
    pair = backbone.encode(["a photo of a cat"], None, width=SIZE, height=SIZE, guidance=guidance)
    if args.stage == "decode-tiled":
        models.pipeline.vae.enable_tiling()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM, the peak resident set, to the current one
    before = read_status("VmRSS")
    with torch.no_grad():
        if args.stage == "transformer":
            backbone.predict(latents, torch.tensor(500.0), pair.cond, guidance=guidance)
        else:
            backbone.decode(latents)
    return {"stage": args.stage, "before_mb": before, "activation_mb": read_status("VmHWM") - before}


def measure(args: argparse.Namespace) -> dict[str, float]:
    """GB of each stage's activations, measured in fresh processes."""
    found = {}
    for stage in ("transformer", "decode", "decode-tiled"):
        arguments = ["--stage", stage, "--depth", args.depth, "--threads", str(args.threads), "--dtype", args.dtype]
        found[stage] = run_worker(__file__, arguments)["activation_mb"] * 2**20 / GB
        print(f"{stage}: {found[stage]:.2f} GB above the loaded models ({args.dtype})", flush=True)
    return found


CONFIGS = {
    # name: (transformer storage, text encoders on the GPU, blocks resident (None: all))
    "plain bf16": ("bf16", True, None),
    "int8": ("int8", True, None),
    "t5-cpu": ("bf16", False, None),
    "int8 + t5-cpu": ("int8", False, None),
    "fp8 + t5-cpu": ("fp8", False, None),
    "int4 + t5-cpu": ("int4", False, None),
    "group offload + t5-cpu": ("bf16", False, 2),
    "int8 + group offload + t5-cpu": ("int8", False, 2),
}
"""Group offload keeps one block on the GPU and copies the next one meanwhile (two resident), and the layers outside
the blocks (counted whole: an upper bound). VAE tiling is left out: FLUX's VAE tiles only above its sample size,
1024 px (diffusers' ``tile_latent_min_size``), so at 1024 px it decodes whole (the measured decode-tiled stage
equals the plain one)."""


def gpu_gb(config: str, figures: dict[str, float], activations: dict[str, float], bank: float) -> tuple[float, str]:
    """GB on the GPU at the peak of ``config`` and the arithmetic of it."""
    mode, encoders_on_gpu, resident = CONFIGS[config]
    if resident is None:
        transformer = figures[f"transformer {mode}"]
        parts = [f"transformer {transformer:.2f}"]
    else:
        largest = max(figures[f"double block {mode}"], figures[f"single block {mode}"])
        transformer = resident * largest + figures[f"outside blocks {mode}"]
        parts = [f"{resident} blocks + rest {transformer:.2f}"]
    total = transformer + figures["vae"]
    parts.append(f"VAE {figures['vae']:.2f}")
    if encoders_on_gpu:  # --text-encoder-device cpu moves both, CLIP-L and T5
        total += figures["t5"] + figures["clip"]
        parts += [f"T5 {figures['t5']:.2f}", f"CLIP {figures['clip']:.2f}"]
    # bf16 activations: half of the fp32 ones measured on the CPU (the GPU run checks it).
    stage = max(activations.get("transformer", 0.0), activations.get("decode", 0.0)) / 2
    total += stage + bank + CUDA_OVERHEAD_GB
    parts += [f"activations {stage:.2f}", f"bank {bank:.2f}", f"CUDA {CUDA_OVERHEAD_GB:.1f}"]
    return total, " + ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", default="1,1,1", help="flux-random's D,S,T for the activation measurement")
    parser.add_argument("--dtype", default="fp32", help="the CPU measurement's dtype")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-measure", action="store_true", help="weights and bank only (no activations)")
    parser.add_argument("--save", type=Path, help="write the figures as JSON")
    parser.add_argument("--activations", type=Path, help="take the activations from a --save JSON, not measuring")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(stage_worker(args)))
        return
    figures = weights()
    print("FLUX.1-dev weights, GB (meta-device parameter counts; torchao layouts for the transformer's linears):")
    for name, value in figures.items():
        print(f"  {name:<26} {value:8.3f}")
    banks = {
        "storydiffusion, bank on the GPU (sa64 0.5, 38 single blocks)": bank_gb(),
        "storydiffusion, csa_blocks=double (19 blocks)": bank_gb(blocks="double"),
        "storydiffusion, bank_device=cpu": 0.0,
    }
    print(f"StoryDiffusion's bank at {SIZE} px, {STEPS} steps, one identity frame, bf16, GB:")
    for name, value in banks.items():
        print(f"  {name:<62} {value:8.2f}")
    if args.activations:
        activations = json.loads(args.activations.read_text())["activations"]
        print(f"activations measured earlier, read from {args.activations}: {activations}")
    else:
        activations = {} if args.skip_measure else measure(args)
    if args.skip_measure:
        print("activations not measured (--skip-measure): the totals below leave them out")
    print(f"\nOn a {GPU_GB:.0f} GB GPU (GB; 'fits' under {GPU_GB:.0f}):")
    for bank_name, bank in [("vanilla", 0.0), *banks.items()]:
        for config in CONFIGS:
            total, arithmetic = gpu_gb(config, figures, activations, bank)
            verdict = "fits" if total < GPU_GB else "does not fit"
            print(f"  {bank_name[:40]:<40} {config:<30} {total:6.2f} {verdict:<13} = {arithmetic}")
    if args.save:
        args.save.write_text(json.dumps({"weights": figures, "banks": banks, "activations": activations}, indent=2))


if __name__ == "__main__":
    main()
