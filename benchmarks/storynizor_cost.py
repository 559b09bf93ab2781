"""What Storynizor costs per frame against vanilla SD 1.5, and whether memory stays flat with story length.

For each method and story length, a fresh process draws a one-character story whose character has a reference
photo (so both the ID-Synchronizer and the ID-Injector run: anchors, then groups reading them) and reports
UNet evaluations per frame (counted), wall time per frame, peak memory (CUDA: ``max_memory_allocated``; CPU:
peak resident set), the anchors' cache, and the cache the -inf-masked formulation would keep (every token of
every anchor frame, at every step and up-block self-attention layer).

    python benchmarks/storynizor_cost.py --preset tiny-sd15 --steps 50 --frames 8 64
    python benchmarks/storynizor_cost.py --preset sd15-random --steps 2 --frames 8 16
    python benchmarks/storynizor_cost.py --preset sd15-random --device cuda --dtype fp16 --steps 50 --frames 8 64

The ratios printed are against vanilla measured in the same run. Bars (issue 9): UNet evaluations per frame
1.0x vanilla's; peak memory flat from 8 to 64 frames.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import all_token_bytes, cost_main, measure, one_character_story


def worker(args: argparse.Namespace) -> dict:
    from PIL import Image

    folder = Path(tempfile.mkdtemp())
    photo = folder / "mara.png"
    Image.new("RGB", (224, 224), (200, 150, 120)).save(photo)
    references = [str(photo)] if args.method == "storynizor" else []
    settings = json.loads(args.method_settings) if args.method == "storynizor" else {}
    row, (method, models, plan) = measure(args, one_character_story(args.frames[0], references), settings)
    anchors = getattr(method, "anchors", None)
    anchor_frames = len(plan.groups[0].frames) if anchors is not None else 0
    row["anchor_mb"] = anchors.nbytes / 2**20 if anchors is not None else 0.0
    row["full_anchor_mb"] = all_token_bytes(models, plan.story, anchor_frames) / 2**20 if anchors is not None else 0.0
    return row


def main() -> None:
    cost_main(
        __doc__,
        __file__,
        "storynizor",
        "tiny-sd15, sd15-random, tiny, sdxl-random",
        worker,
        [("anchor_mb", "anchors MB", ".2f"), ("full_anchor_mb", "all-token anchors MB", ".2f")],
        preset="tiny-sd15",
        frames=[8, 64],
    )


if __name__ == "__main__":
    main()
