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
4. ``pulid`` and ``identitystory`` on FLUX (PuLID-FLUX): PuLID-FLUX's IDFormer and 20 cross-attention (CA) modules
   and EVA02-CLIP-L-14-336's vision tower counted on the meta device from our modules in their official geometry,
   in bf16 (the adapter loads them in the transformer's dtype); the antelopev2 face models at their ONNX files'
   sizes (fp32; onnxruntime holds them so); the transformer evaluation measured again with PuLID's ID branch acting
   on 1 and on 3 rows (``transformer-pulid``), which prices every batch the methods run at once: ``pulid``'s one
   row (two with ``true_cfg`` > 1), identitystory's stage 2 (K rows for K characters, 2K with true CFG: stage 1's
   noise outside the masks is kept, not recomputed, flux_injection.py), and discovery's candidates
   (``discovery_batch_size``, 16, decoded one at a time). Per phase, the PuLID parts on the GPU
   then: IDFormer and EVA only while identities are made, unless ``--method pulid`` (which keeps them) or
   ``offload_encoders=false``.

    python benchmarks/flux_budget.py --depth 1,1,1 --threads 2        # the CPU measurement and the table
    python benchmarks/flux_budget.py --skip-measure                    # the weights and the bank only
    python benchmarks/flux_budget.py --activations figures.json        # the activations of an earlier --save
    python benchmarks/flux_budget.py --skip-measure --methods            # and the pulid / identitystory rows

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
    rows = args.rows if args.stage == "transformer-pulid" else 1
    latents = torch.randn(rows, *backbone.latent_shape(SIZE, SIZE), dtype=backbone.dtype)
    guidance = backbone.guidance(3.5)
    pair = backbone.encode(["a photo of a cat"] * rows, None, width=SIZE, height=SIZE, guidance=guidance)
    if args.stage == "decode-tiled":
        models.pipeline.vae.enable_tiling()
    branch = pulid_branch(backbone.denoiser, rows, backbone.dtype) if args.stage == "transformer-pulid" else None
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM, the peak resident set, to the current one
    before = read_status("VmRSS")
    with torch.no_grad():
        if args.stage.startswith("transformer"):
            backbone.predict(latents, torch.tensor(500.0), pair.cond, guidance=guidance)
        else:
            backbone.decode(latents)
    if branch is not None:
        branch.detach()
    return {"stage": args.stage, "before_mb": before, "activation_mb": read_status("VmHWM") - before}


def pulid_branch(transformer, rows: int, dtype):
    """PuLID-FLUX's ID branch on the shrunk transformer, random CA modules of the official geometry at FLUX.1's
    width (one after double block 0 and single block 0 at depth 1,1), every row given 32 random ID tokens: what
    ``pulid`` and identitystory's stage 2 run (each row its own identity, on every image token)."""
    import torch

    from storycast.identity.pulid_flux import PuLIDFlux, PuLIDFluxConfig
    from storycast.identity.pulid_flux_branch import IDTarget, PuLIDFluxBranch

    config = PuLIDFluxConfig.official().for_transformer(
        len(transformer.transformer_blocks), len(transformer.single_transformer_blocks), HIDDEN
    )
    cross_attentions = PuLIDFlux(config).pulid_ca.to(dtype)
    branch = PuLIDFluxBranch.attach(transformer, cross_attentions)
    generator = torch.Generator().manual_seed(0)
    tokens = [
        torch.randn(config.num_queries, config.output_dim, generator=generator, dtype=dtype) for _ in range(rows)
    ]
    branch.set_rows([[IDTarget(t)] for t in tokens])
    return branch


STAGES = {"transformer": 1, "transformer-pulid": 1, "transformer-pulid x3": 3, "decode": 1, "decode-tiled": 1}
"""Each measured stage and its batch rows; ``transformer-pulid`` is the evaluation with PuLID's ID branch acting."""


def measure(args: argparse.Namespace) -> dict[str, float]:
    """GB of each stage's activations, measured in fresh processes."""
    found = {}
    for name, rows in STAGES.items():
        stage = name.split(" ")[0]
        arguments = ["--stage", stage, "--rows", str(rows), "--depth", args.depth, "--threads", str(args.threads),
                     "--dtype", args.dtype]  # fmt: skip
        found[name] = run_worker(__file__, arguments)["activation_mb"] * 2**20 / GB
        print(f"{name}: {found[name]:.2f} GB above the loaded models ({args.dtype})", flush=True)
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


def placed(config: str, figures: dict[str, float]) -> list[tuple[str, float]]:
    """The FLUX weights ``config`` keeps on the GPU, (label, GB) each."""
    mode, encoders_on_gpu, resident = CONFIGS[config]
    if resident is None:
        parts = [("transformer", figures[f"transformer {mode}"])]
    else:
        largest = max(figures[f"double block {mode}"], figures[f"single block {mode}"])
        parts = [(f"{resident} blocks + rest", resident * largest + figures[f"outside blocks {mode}"])]
    parts.append(("VAE", figures["vae"]))
    if encoders_on_gpu:  # --text-encoder-device cpu moves both, CLIP-L and T5
        parts += [("T5", figures["t5"]), ("CLIP", figures["clip"])]
    return parts


def summed(parts: list[tuple[str, float]]) -> tuple[float, str]:
    return sum(value for _, value in parts), " + ".join(f"{label} {value:.2f}" for label, value in parts)


def gpu_gb(config: str, figures: dict[str, float], activations: dict[str, float], bank: float) -> tuple[float, str]:
    """GB on the GPU at the peak of ``config`` and the arithmetic of it."""
    # bf16 activations: half of the fp32 ones measured on the CPU (the GPU run checks it).
    stage = max(activations.get("transformer", 0.0), activations.get("decode", 0.0)) / 2
    extra = [("activations", stage), ("bank", bank), ("CUDA", CUDA_OVERHEAD_GB)]
    return summed(placed(config, figures) + extra)


# -- pulid and identitystory on FLUX (PuLID-FLUX) ----------------------------------------------------------------

ANTELOPEV2_MB = {"glintr100.onnx": 261.0, "scrfd_10g_bnkps.onnx": 16.9}
"""The two antelopev2 files PuLID's face reading opens (storycast.identity.pulid_faces: SCRFD-10G and ArcFace),
fp32 ONNX, MB: glintr100 (IResNet-100, 65.2M parameters x 4 B; the figure issue 21 gives), scrfd_10g_bnkps
16.9 MB (ufme-docs.pages.dev/models/model-selection). insightface's FaceAnalysis in PuLID's own code also loads
the pack's landmark and gender-age models; ours does not."""


def pulid_parts() -> dict[str, float]:
    """GB of PuLID-FLUX's parts for FLUX.1-dev: IDFormer, the 20 CA modules and EVA02-CLIP-L-14-336's vision tower in
    bf16 (built on the meta device from our modules in the official geometry), the face models' ONNX files (fp32),
    and BiSeNet (fp32, only with ``face_parsing``)."""
    import torch

    from storycast.identity.eva_clip import EvaVisionConfig, EvaVisionTower
    from storycast.identity.pulid_flux import PuLIDFlux, PuLIDFluxConfig
    from storycast.vision.face_parsing import BiSeNet

    with torch.device("meta"):
        pulid = PuLIDFlux(PuLIDFluxConfig.official())
        eva = EvaVisionTower(EvaVisionConfig.l14_336())
        bisenet = BiSeNet()
    return {
        "pulid idformer": weight_bytes(pulid.pulid_encoder, "bf16") / GB,
        f"pulid ca ({len(pulid.pulid_ca)} modules)": weight_bytes(pulid.pulid_ca, "bf16") / GB,
        "eva02-clip-l-14-336": weight_bytes(eva, "bf16") / GB,
        "face models (onnx)": sum(ANTELOPEV2_MB.values()) * 1e6 / GB,
        "bisenet (face_parsing)": 4 * sum(p.numel() for p in bisenet.parameters()) / GB,
    }


PHASES = {
    # name: (PuLID parts on the GPU, rows of the largest transformer evaluation, images decoded at once)
    "pulid": (("ca", "idformer", "eva", "faces"), 1, 1),
    "pulid, true_cfg > 1": (("ca", "idformer", "eva", "faces"), 2, 1),
    "identitystory frames, 1 character": (("ca", "faces"), 1, 1),
    "identitystory frames, 3 characters": (("ca", "faces"), 3, 1),
    "identitystory frames, 3 chars, true CFG": (("ca", "faces"), 6, 1),
    "identitystory frames, 3 chars, encoders kept": (("ca", "idformer", "eva", "faces"), 3, 1),
    "identitystory discovery, batch 16": (("ca", "idformer", "eva", "faces"), 16, 1),
    "identitystory discovery, batch 4": (("ca", "idformer", "eva", "faces"), 4, 1),
}
"""What runs at once in each phase of the two methods. ``pulid`` keeps its encoders on the GPU (its ``prepare`` does
not offload them); identitystory moves EVA and IDFormer to the CPU once every identity is known
(``offload_encoders``, default on), so drawing frames holds only the CA modules and the face models (onnxruntime
sessions are not moved). Stage 2 batches the K characters' region passes, one row each (2K with true CFG); stage 1 is
one row. Discovery draws ``discovery_batch_size`` candidates a batch at the story's size and decodes them one at a
time (``pulid_discovery.decoding_one_at_a_time``: 16 decoded together took 32 GB at 1024 px). GroundingDINO and SAM, when they make the masks, are offloaded between frames
and not counted here."""

PULID_LABELS = {"ca": "pulid ca (20 modules)", "idformer": "pulid idformer", "eva": "eva02-clip-l-14-336",
                "faces": "face models (onnx)"}  # fmt: skip


def pulid_activations(rows: int, activations: dict[str, float]) -> float:
    """fp32 GB of one transformer evaluation of ``rows`` rows with the ID branch acting: the line through the
    measured 1 and 3 rows (activations are per row; the fixed part is the resident set's noise)."""
    one, three = activations.get("transformer-pulid", 0.0), activations.get("transformer-pulid x3", 0.0)
    per_row = (three - one) / 2
    return one + per_row * (rows - 1)


def method_gb(
    config: str, phase: str, figures: dict[str, float], pulid: dict[str, float], activations: dict[str, float]
) -> tuple[float, str]:
    """GB on the GPU at the peak of ``phase`` under ``config`` and the arithmetic of it (bf16 activations, half the
    fp32 ones measured, as :func:`gpu_gb`)."""
    names, rows, images = PHASES[phase]
    parts = placed(config, figures)
    parts += [(name, pulid[PULID_LABELS[name]]) for name in names]
    transformer = pulid_activations(rows, activations) / 2
    decode = images * activations.get("decode", 0.0) / 2
    label = f"{rows}-row evaluation" if transformer >= decode else f"decode of {images}"
    parts += [(f"activations ({label})", max(transformer, decode)), ("CUDA", CUDA_OVERHEAD_GB)]
    return summed(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", default="1,1,1", help="flux-random's D,S,T for the activation measurement")
    parser.add_argument("--dtype", default="fp32", help="the CPU measurement's dtype")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-measure", action="store_true", help="weights and bank only (no activations)")
    parser.add_argument("--save", type=Path, help="write the figures as JSON")
    parser.add_argument("--activations", type=Path, help="take the activations from a --save JSON, not measuring")
    parser.add_argument("--methods", action="store_true", help="also the pulid and identitystory rows")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1, help=argparse.SUPPRESS)
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
    saved = {"weights": figures, "banks": banks, "activations": activations}
    if args.methods:
        saved["pulid"] = print_methods(figures, activations)
    if args.save:
        args.save.write_text(json.dumps(saved, indent=2))


def print_methods(figures: dict[str, float], activations: dict[str, float]) -> dict[str, float]:
    """The pulid and identitystory rows: PuLID's parts, then each phase under each configuration."""
    pulid = pulid_parts()
    print("\nPuLID-FLUX's parts, GB (meta-device parameter counts, bf16; ONNX file sizes and BiSeNet fp32):")
    for name, value in pulid.items():
        print(f"  {name:<26} {value:8.3f}")
    if activations:
        print("ID branch, one 1024 px evaluation, fp32 GB above the loaded models: "
              f"1 row {activations['transformer-pulid']:.2f} (plain FLUX {activations['transformer']:.2f}), "
              f"3 rows {activations['transformer-pulid x3']:.2f}")  # fmt: skip
    print(f"\npulid and identitystory on a {GPU_GB:.0f} GB GPU (GB; 'fits' under {GPU_GB:.0f}):")
    for phase in PHASES:
        for config in CONFIGS:
            total, arithmetic = method_gb(config, phase, figures, pulid, activations)
            verdict = "fits" if total < GPU_GB else "does not fit"
            print(f"  {phase[:46]:<46} {config:<30} {total:6.2f} {verdict:<13} = {arithmetic}")
    return pulid


if __name__ == "__main__":
    main()
