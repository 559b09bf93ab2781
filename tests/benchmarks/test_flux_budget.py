"""The 24 GB arithmetic of benchmarks/flux_budget.py held to what it prices: torchao's stored bytes of int8 and fp8
weights, FLUX.1-dev's parameter count, and StoryDiffusion's bank as the method fills it on the tiny FLUX."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from storycast.methods.base import RunContext
from storycast.methods.storydiffusion.method import StoryDiffusionMethod
from storycast.utils.imports import is_available
from tests.methods.helpers import plan_for, two_friends

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import flux_budget


def stored_bytes(tensor) -> int:
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


@pytest.mark.skipif(not is_available("torchao"), reason="needs torchao: pip install 'storycast[quant]'")
@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantized_weight_prices_are_torchaos_stored_bytes(mode):
    from torchao.quantization import quantize_

    from storycast.models.quantization import quantize_config

    model = torch.nn.Sequential(torch.nn.Linear(256, 96), torch.nn.LayerNorm(96), torch.nn.Linear(96, 40, bias=False))
    model = model.to(torch.bfloat16)
    priced = flux_budget.weight_bytes(model, mode)
    assert flux_budget.weight_bytes(model, "bf16") == 2 * sum(p.numel() for p in model.parameters())
    quantize_(model, quantize_config(mode), filter_fn=lambda module, _name: isinstance(module, torch.nn.Linear))
    assert priced == sum(stored_bytes(p) for p in model.parameters())


def test_flux_dev_weights_are_its_twelve_billion_parameters():
    figures = flux_budget.weights()
    assert 11.8e9 < figures["transformer bf16"] * flux_budget.GB / 2 < 11.95e9  # FLUX.1-dev: 11.9B
    assert figures["transformer int4"] < figures["transformer int8"] < 0.51 * figures["transformer bf16"]
    assert 4.7e9 < figures["t5"] * flux_budget.GB / 2 < 4.9e9  # T5 v1.1 XXL's encoder: 4.76B with its vocabulary
    blocks = 19 * figures["double block bf16"] + 38 * figures["single block bf16"]
    assert figures["outside blocks bf16"] == pytest.approx(figures["transformer bf16"] - blocks)


def test_the_bank_formula_is_the_bank_storydiffusion_fills(tiny_flux):
    frames = [{"text": "{mara} reading"}, {"text": "{mara} cooking"}]
    generation = {"steps": 3, "width": 128, "height": 128}
    plan = plan_for("storydiffusion", two_friends(frames), preset="tiny-flux", model=tiny_flux,
                    settings={"sampling": "fixed", "id_length": "1"}, generation=generation)  # fmt: skip
    method = StoryDiffusionMethod(tiny_flux, plan.settings)
    method.generate(plan.story, plan.groups[0].group.frames, RunContext())
    transformer = tiny_flux.backbone.denoiser
    expected = flux_budget.bank_bytes(
        rate=0.5, identity_frames=1, layers=len(transformer.single_transformer_blocks), steps=3,
        tokens=(128 // 16) ** 2, hidden=transformer.inner_dim, itemsize=4,
    )  # fmt: skip
    assert method.bank.nbytes == expected


def test_the_budget_prints_each_configuration_with_its_arithmetic():
    script = Path(flux_budget.__file__)
    done = subprocess.run([sys.executable, str(script), "--skip-measure", "--methods"], capture_output=True, text=True,
                          timeout=900, cwd=script.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line[43:73].strip(): line[73:] for line in done.stdout.splitlines() if line.startswith("  vanilla ")}
    assert "does not fit" in rows["plain bf16"] and "= transformer 23.80 + " in rows["plain bf16"]
    assert " fits " in rows["int8 + t5-cpu"] and "T5" not in rows["int8 + t5-cpu"]
    phases = {line[2:48].strip() + " | " + line[49:79].strip(): line[79:] for line in done.stdout.splitlines()
              if line.startswith(("  pulid", "  identitystory")) and " = " in line}  # fmt: skip
    assert len(phases) == len(flux_budget.PHASES) * len(flux_budget.CONFIGS)
    drawing = phases["identitystory frames, 3 characters | int8 + t5-cpu"]
    assert " fits " in drawing and "ca 0.84" in drawing and "idformer" not in drawing  # encoders offloaded
    assert "idformer 0.30 + eva 0.61" in phases["pulid | int8 + t5-cpu"]  # pulid keeps its encoders


def test_pulid_flux_parts_are_counted_in_the_official_geometry():
    """PuLID-FLUX's 20 CA modules (norm1 over the 2048-wide ID tokens, norm2 over FLUX's 3072, to_q 3072 -> 2048,
    to_kv 2048 -> 2 x 2048, to_out 2048 -> 3072, no biases) and EVA02-CLIP-L-14-336's 304M-parameter vision tower,
    in bf16."""
    parts = flux_budget.pulid_parts()
    per_ca = 2 * 2048 + 2 * 3072 + 3072 * 2048 + 2048 * 4096 + 2048 * 3072
    assert parts["pulid ca (20 modules)"] * flux_budget.GB == 20 * per_ca * 2
    assert 3.03e8 < parts["eva02-clip-l-14-336"] * flux_budget.GB / 2 < 3.06e8
    assert parts["face models (onnx)"] == pytest.approx(0.2779)


def test_a_phase_is_priced_from_its_rows_and_its_decoded_images():
    figures = flux_budget.weights()
    pulid = flux_budget.pulid_parts()
    activations = {"transformer-pulid": 1.0, "transformer-pulid x3": 2.0, "decode": 3.0}  # fp32 GB
    assert flux_budget.pulid_activations(6, activations) == pytest.approx(3.5)  # 1 + 0.5 per further row
    frames, _ = flux_budget.method_gb("int8 + t5-cpu", "identitystory frames, 3 chars, true CFG", figures, pulid,
                                      activations)  # fmt: skip
    discovery, arithmetic = flux_budget.method_gb("int8 + t5-cpu", "identitystory discovery, batch 16", figures,
                                                  pulid, activations)  # fmt: skip
    base = figures["transformer int8"] + figures["vae"] + flux_budget.CUDA_OVERHEAD_GB
    assert frames == pytest.approx(  # the 6 rows' 1.75 GB in bf16 above the decode's 1.5
        base + pulid["pulid ca (20 modules)"] + pulid["face models (onnx)"] + 3.5 / 2
    )
    # Candidates are decoded one at a time: the 16-row evaluation (1 + 15 x 0.5 GB in fp32) is the peak.
    assert "16-row evaluation" in arithmetic and discovery == pytest.approx(
        base + sum(v for k, v in pulid.items() if "bisenet" not in k) + 8.5 / 2
    )
