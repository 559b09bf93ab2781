"""A naive reference of CharaConsist written from the authors' algorithm (Murray-Wang/CharaConsist@759018c,
``models/attention_processor_characonsist.py`` and ``models/pipeline_characonsist.py``), for the equivalence
tests: its own processor over the whole [text, image] sequence with a full attention mask, its own mask clean-up
(max pools), its own matching and merge, and its own denoising loop with the pipeline's flags and the spatial
values carried from call to call as ``inference.py`` carries them. Nothing here imports storycast's CharaConsist.

``perturb`` changes one part, so that a test can show the equivalence fails when that part is changed:
"roll-matches" gives each matched frame point another identity token, "keep-positions" leaves identity keys at
their own rotary positions instead of the matched points', "half-merge" halves the merge weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb


@dataclass
class Flags:
    """What the pipeline's ``get_consist_kwargs`` gives the layers at one step, and the spatial values."""

    step: int = 0
    save_attn_weight: bool = False
    save_attn_kv: bool = False
    save_attn_out_for_sim: bool = False
    save_attn_out_for_interpolate: bool = False
    save_cross_sim: bool = False
    fg_inter_img_attn: bool = False
    bg_inter_img_attn: bool = False
    attn_out_interpolate: bool = False
    weights: dict[int, float] = field(default_factory=dict)
    spatial: dict[str, Any] = field(default_factory=dict)
    perturb: str | None = None


class AuthorsProcessor:
    """One single-stream layer, as ``CharaConsistAttnProcessor2_0`` computes it (no text projections: the
    single-stream body)."""

    def __init__(self, flags: Flags, text: int, size: tuple[int, int], fg_share: bool, bg_share: bool):
        self.flags, self.text, self.size = flags, text, size
        self.fg_share, self.bg_share = fg_share, bg_share
        self.bank: dict[int, dict[str, torch.Tensor]] = {}
        self.bg_len = self.real_len = 0
        self.weights: dict[str, torch.Tensor] = {}
        self.cross_sim: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        f, text = self.flags, self.text
        b = hidden_states.shape[0]
        heads = attn.heads
        q, k, v = (
            proj(hidden_states).view(b, -1, heads, attn.head_dim).transpose(1, 2)
            for proj in (attn.to_q, attn.to_k, attn.to_v)
        )
        q, k = attn.norm_q(q), attn.norm_k(k)
        if f.save_attn_kv:
            self.bank.setdefault(f.step, {}).update(key=k[:, :, text:].clone(), value=v[:, :, text:].clone())
        q = apply_rotary_emb(q, image_rotary_emb)
        k = apply_rotary_emb(k, image_rotary_emb)
        if f.save_attn_weight:
            w = torch.matmul(q[:, :, text:], k[:, :, : self.real_len].transpose(-2, -1)).softmax(-1).sum(1)
            w = w.transpose(1, 2).reshape(b, self.real_len, *self.size)
            self.weights = {"bg": w[:, : self.bg_len].mean(1), "fg": w[:, self.bg_len :].mean(1)}
        fg = self.fg_share and f.fg_inter_img_attn
        bg = self.bg_share and f.bg_inter_img_attn
        mask = None
        if fg or bg:
            image_rotary = (image_rotary_emb[0][text:], image_rotary_emb[1][text:])
            expanded = self.expanded(image_rotary, bg, fg, q.shape[2], k.device)
            if expanded is not None:
                extra_k, extra_v, mask = expanded
                k = torch.cat([k, extra_k], dim=2)
                v = torch.cat([v, extra_v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, -1, heads * attn.head_dim)
        if f.save_attn_out_for_sim or (f.save_attn_out_for_interpolate and self.fg_share):
            self.bank.setdefault(f.step, {})["attn_out"] = out[:, text:].clone()
        if f.save_cross_sim:
            identity = self.bank[f.step]["attn_out"]
            self.cross_sim = F.normalize(out[:, text:], dim=-1) @ F.normalize(identity, dim=-1).transpose(-2, -1)
        if f.attn_out_interpolate and fg:
            out = self.merge(out)
        return out

    def expanded(self, rotary, bg, fg, length, device):
        s, f = self.flags.spatial, self.flags
        saved = self.bank[f.step]
        curr_fg = s["curr_fg_mask"].flatten()
        keys, values, id_fg = [], [], []
        shared = s["id_bg_mask"].flatten() & ~curr_fg
        if bg and shared.any():  # the authors' code fails on an empty part
            keys.append(apply_rotary_emb(saved["key"][:, :, shared], (rotary[0][shared], rotary[1][shared])))
            values.append(saved["value"][:, :, shared])
            id_fg.append(torch.zeros(int(shared.sum()), dtype=torch.bool))
        if fg and len(s["id_fg_inds"]):
            id_inds, curr_inds = s["id_fg_inds"], s["curr_fg_inds"]
            if f.perturb == "roll-matches":
                id_inds = id_inds.roll(1)
            at = id_inds if f.perturb == "keep-positions" else curr_inds  # the matched points' positions
            keys.append(apply_rotary_emb(saved["key"][:, :, id_inds], (rotary[0][at], rotary[1][at])))
            values.append(saved["value"][:, :, id_inds])
            id_fg.append(torch.ones(len(id_inds), dtype=torch.bool))
        if not keys:
            return None
        id_fg = torch.cat(id_fg)
        expand = id_fg.view(1, 1, 1, -1) != curr_fg.view(1, 1, -1, 1)
        expand = torch.cat([torch.ones(1, 1, self.text, len(id_fg), dtype=torch.bool), expand], dim=-2)
        mask = torch.zeros(1, 1, length, length + len(id_fg))
        mask[..., length:].masked_fill_(expand, float("-inf"))
        return torch.cat(keys, dim=2), torch.cat(values, dim=2), mask.to(device)

    def merge(self, out):
        s, f = self.flags.spatial, self.flags
        identity = self.bank[f.step]["attn_out"]
        id_inds, curr_inds = s["id_fg_inds"], s["curr_fg_inds"]
        weight = f.weights[f.step] * (0.5 if f.perturb == "half-merge" else 1.0)
        alpha = (weight * s["max_sim"].flatten()[curr_inds]).view(1, -1, 1)
        image = out[:, self.text :].clone()
        image[:, curr_inds] = (1 - alpha) * image[:, curr_inds] + alpha * identity[:, id_inds]
        return torch.cat([out[:, : self.text], image], dim=1)


def interpolate_weights(weight, start, decay, end):
    steps = np.arange(0, end - decay)
    decaying = (weight * 0.5 * (1 + np.cos(np.pi * steps / (end - decay)))).tolist()
    values = [weight] * (decay - start) + decaying
    return {step: values[i] for i, step in enumerate(range(start, end))}


def clean(mask):
    """cv2.erode 3 x 3 then cv2.dilate 5 x 5 with OpenCV's default borders, as max pools."""
    x = mask.float()[:, None]
    eroded = -F.max_pool2d(-x, 3, 1, 1)
    return F.max_pool2d(eroded, 5, 1, 2)[:, 0] > 0.5


def text_lengths(tokenizer, background: str, prompt: str, max_length: int) -> tuple[int, int]:
    """``get_text_tokens_length`` of the background part and of the whole prompt (``inference.py`` lines 68-84)."""

    def length(text):
        tokens = tokenizer(text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        return int(tokens.attention_mask.sum()) - 1

    return length(background + " "), length(prompt)


class AuthorsRun:
    """The authors' story loop on a loaded tiny FLUX: the identity image, then per frame a first pass and the real
    one, every pass from the one seed (``inference.py`` lines 144-171)."""

    def __init__(self, backbone, steps, size, windows, *, share_bg, fg_every=2, bg_every=1, threshold=0.5,
                 merge_weight=0.8, perturb=None):  # fmt: skip
        self.backbone, self.steps, self.size = backbone, steps, size
        self.start, self.end, self.mask_step, self.m_start, self.m_decay, self.m_end = windows
        self.share_bg, self.threshold, self.merge_weight = share_bg, threshold, merge_weight
        self.flags = Flags(perturb=perturb)
        transformer = backbone.denoiser
        text = backbone.max_sequence_length
        grid = (size // 16, size // 16)
        self.processors = {
            f"single_transformer_blocks.{i}.attn.processor": AuthorsProcessor(
                self.flags, text, grid, fg_share=i % fg_every == 0, bg_share=i % bg_every == 0
            )
            for i in range(len(transformer.single_transformer_blocks))
        }

    def flags_at(self, i, is_id, is_pre_run):
        f = self.flags
        shares = self.start <= i < self.end
        f.step = i
        f.save_attn_weight = i == self.mask_step if is_id else i <= self.mask_step
        f.save_attn_kv = is_id and shares
        f.save_attn_out_for_sim = is_id and i == self.mask_step
        f.save_attn_out_for_interpolate = is_id and self.m_start <= i < self.m_end
        f.save_cross_sim = not is_id and i == self.mask_step
        f.fg_inter_img_attn = not is_id and not is_pre_run and shares
        f.bg_inter_img_attn = not is_id and shares and self.share_bg
        f.attn_out_interpolate = not is_id and not is_pre_run and self.m_start <= i < self.m_end

    def one_pass(self, prompt, lengths, seed, is_id=False, is_pre_run=False):
        from storycast.pipelines.sampler import Sampling
        from storycast.story.model import GenerationSettings
        from storycast.utils.torch_utils import make_generator

        backbone, f = self.backbone, self.flags
        for p in self.processors.values():
            p.bg_len, p.real_len = lengths
        generation = GenerationSettings(width=self.size, height=self.size, steps=self.steps, guidance_scale=3.5)
        sampling = Sampling.of(backbone, generation)
        conditioning = backbone.encode([prompt], None, width=self.size, height=self.size, guidance=sampling.guidance)
        scheduler = backbone.scheduler(self.steps, width=self.size, height=self.size)
        latents = backbone.initial_latents(scheduler, [make_generator(seed)], width=self.size, height=self.size)
        f.weights = interpolate_weights(self.merge_weight, self.m_start, self.m_decay, self.m_end)
        for i, t in enumerate(scheduler.timesteps):
            self.flags_at(i, is_id, is_pre_run)
            noise = backbone.guided_noise(latents, t, conditioning, sampling.guidance)
            if f.save_attn_weight:
                layers = list(self.processors.values())
                bg = sum(p.weights["bg"] for p in layers) / len(layers)
                fg = sum(p.weights["fg"] for p in layers) / len(layers)
                f.spatial["curr_fg_mask"] = clean(bg <= fg)
            if f.save_cross_sim:
                layers = list(self.processors.values())
                sim = sum(p.cross_sim for p in layers) / len(layers)
                max_sim, argmax = sim.max(dim=-1)
                share = (
                    f.spatial["curr_fg_mask"].flatten()
                    & f.spatial["id_fg_mask"].flatten()[argmax[0]]
                    & (max_sim > self.threshold).flatten()
                )
                f.spatial.update(
                    id_fg_inds=argmax[0][share], curr_fg_inds=torch.nonzero(share).flatten(), max_sim=max_sim
                )
            if is_pre_run and i == self.mask_step:
                return None
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def draw(self, prompts, lengths, seeds):
        """The identity prompt, then each frame prompt, each from its seed: the final latents of each (the authors
        draw every image from one seed; a test may give each its own)."""
        from storycast.attention.layers import install_processors

        with install_processors(self.backbone.denoiser, self.processors):
            out = [self.one_pass(prompts[0], lengths[0], seeds[0], is_id=True)]
            id_fg = self.flags.spatial["curr_fg_mask"]
            self.flags.spatial = {"id_fg_mask": id_fg, "id_bg_mask": ~id_fg}
            for prompt, length, seed in zip(prompts[1:], lengths[1:], seeds[1:], strict=True):
                self.one_pass(prompt, length, seed, is_pre_run=True)
                out.append(self.one_pass(prompt, length, seed))
        return out
