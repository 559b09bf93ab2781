"""What StoryDiffusion costs per frame against vanilla, and whether memory stays flat with story length.

For each method and story length, a fresh process draws a one-character story (its first frame is the
identity frame, every other frame reads its bank) and reports denoiser evaluations per frame (counted), wall
time per frame, peak memory (CUDA: ``max_memory_allocated``; CPU: peak resident set) and the size of the
token bank, next to the bank the authors' mask variant keeps (every token of every identity frame, at every
step and layer).

    python benchmarks/storydiffusion_cost.py --steps 50 --frames 10 100                 # tiny SDXL, CPU
    python benchmarks/storydiffusion_cost.py --preset sdxl-random --size 256 --steps 2 --frames 2 4
    python benchmarks/storydiffusion_cost.py --preset sdxl-random --device cuda --dtype fp16 --size 768 --steps 35
    python benchmarks/storydiffusion_cost.py --preset tiny-flux --steps 28 --frames 10 100          # FLUX, CPU
    python benchmarks/storydiffusion_cost.py --preset flux-random --depth 1,2,1 --size 128 --steps 2 --frames 10 100
    python benchmarks/storydiffusion_cost.py --preset flux-random --device cuda --dtype bf16 --size 1024 --steps 28

The ratios printed are against vanilla measured in the same run. Bars (the core issue): UNet evaluations
per frame 1.0x vanilla's; peak memory flat from 10 to 100 frames.
"""

from __future__ import annotations

import argparse
import json

from harness import all_token_bytes, cost_main, measure, one_character_story


def worker(args: argparse.Namespace) -> dict:
    settings = json.loads(args.method_settings) if args.method == "storydiffusion" else {}
    row, (method, models, plan) = measure(args, one_character_story(args.frames[0]), settings)
    bank = getattr(method, "bank", None)
    identity = sum(len(g.frames) for g in plan.groups if g.group.role.startswith("identity"))
    row["bank_mb"] = bank.nbytes / 2**20 if bank is not None else 0.0
    blocks = plan.settings.attention.blocks if bank is not None else ()
    row["full_bank_mb"] = all_token_bytes(models, plan.story, identity, blocks) / 2**20 if bank is not None else 0.0
    return row


def main() -> None:
    cost_main(
        __doc__,
        __file__,
        "storydiffusion",
        "tiny, tiny-sd15, tiny-flux, sdxl-random, sd15-random, flux-random",
        worker,
        [("bank_mb", "bank MB", ".2f"), ("full_bank_mb", "all-token bank MB", ".2f")],
    )


if __name__ == "__main__":
    main()
