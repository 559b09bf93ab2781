"""One process of the two-process training test (started by torchrun): train, then record a digest of the
trained weights and this process's losses, so the test can compare the processes."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    from storycast.models.spec import ModelSpec
    from storycast.training.loop import train_storynizor
    from storycast.training.settings import StorynizorTrainSettings

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    settings = StorynizorTrainSettings.from_mapping(
        {"resolution": "64", "max_steps": "2", "checkpoint_every": "2"}, where="ddp test"
    )
    result = train_storynizor(data, out, settings, ModelSpec(source="tiny-sd15", device="cpu"))
    from safetensors.torch import load_file

    from storycast.training.loop import checkpoint_dirs

    state = load_file(str(checkpoint_dirs(out)[-1] / "trainable.safetensors"))
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].to(torch.float64).numpy().round(6).tobytes())
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank-{rank}.json").write_text(json.dumps({"state": digest.hexdigest(), "losses": result.losses}))


if __name__ == "__main__":
    main()
