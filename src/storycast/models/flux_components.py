"""FLUX.1 pipeline components with random weights, built offline from configs in code.

Two sizes of the same architecture, as ``storycast.models.tiny`` and ``storycast.models.random_full`` give
them for SDXL: :func:`tiny_flux_components` keeps FLUX.1's structure (double- and single-stream blocks,
64-channel packed latents, 16-channel VAE latents downsampled 8x, a CLIP and a T5 text encoder, the
flow-matching scheduler) at toy widths so every code path of ``diffusers.FluxPipeline`` runs on a CPU;
:func:`random_flux_components` builds the real FLUX.1-dev / FLUX.1-schnell geometry for timing and
memory measurements where the weights cannot be downloaded. Both draw their T5 vocabulary from
:func:`tiny_t5_tokenizer`, a T5-style Unigram tokenizer built in code from the tiny CLIP vocabulary
shipped with the package. The images are noise: use these for tests and timing, never for quality.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from storycast.models.random_full import CLIP_L, VAE
from storycast.models.tiny import (
    TEXT_HIDDEN,
    TOKENIZER_FOLDER,
    TOKENIZER_PACKAGE,
    tiny_text_config,
    tiny_tokenizer,
)
from storycast.utils.torch_utils import seeded

Size = Literal["full", "tiny"]

# black-forest-labs/FLUX.1-dev transformer/config.json; the same values as the "flux-dev" FluxParams of
# black-forest-labs/flux src/flux/util.py (hidden_size 3072 = 24 heads x 128, depth 19, depth_single_blocks 38,
# context_in_dim 4096, vec_in_dim 768, axes_dim [16, 56, 56]). FLUX.1-schnell differs only in guidance_embeds.
FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": (16, 56, 56),
}
# The same block layout at toy widths: 2 double-stream and 4 single-stream blocks (so tests can tell the two
# kinds apart and pick some), inner dim 2 x 16 = 32, RoPE axes summing to the head dim, text widths of the tiny
# T5 (32) and the tiny CLIP (storycast.models.tiny.TEXT_HIDDEN).
TINY_T5_D_MODEL = 32
TINY_FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": TINY_T5_D_MODEL,
    "pooled_projection_dim": TEXT_HIDDEN,
    "axes_dims_rope": (4, 6, 6),
}

# black-forest-labs/FLUX.1-dev vae/config.json (the "ae_params" of black-forest-labs/flux src/flux/util.py:
# ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2, z_channels 16, scale_factor 0.3611, shift_factor 0.1159).
FLUX_VAE = {
    **VAE,  # SD's 4-level, 8x VAE
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
# Four levels (the real 8x downsampling: a 128 px image has 16x16 latents) and FLUX's 16 latent channels,
# scaling and shift, at the widths of storycast.models.tiny's VAE.
TINY_FLUX_VAE = {
    **FLUX_VAE,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 128,
}

# openai/clip-vit-large-patch14's text tower, FLUX.1-dev text_encoder/config.json (CLIPTextModel; FLUX reads only
# its pooled output).
CLIP_L_TEXT = CLIP_L

# google/t5-v1_1-xxl's encoder, FLUX.1-dev text_encoder_2/config.json (T5EncoderModel); the sizes are those of
# google-research/text-to-text-transfer-transformer's t5.1.1.xxl.gin (d_model 4096, d_ff 10240, 64 heads,
# 24 layers, GEGLU feed-forward). Dropout is off: the encoder only runs in eval mode here.
T5_XXL_ENCODER = {
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
}
TINY_T5_ENCODER = {
    **T5_XXL_ENCODER,
    "d_model": TINY_T5_D_MODEL,
    "d_ff": 37,
    "d_kv": 8,
    "num_heads": 4,
    "num_layers": 2,
}

# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json: resolution-dependent shift (mu from the image
# sequence length, between base_shift at 256 tokens and max_shift at 4096).
FLUX_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# black-forest-labs/FLUX.1-schnell scheduler/scheduler_config.json: no shift at all (the timestep-distilled
# model samples in 1-4 steps on the plain schedule).
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}

# The T5 tokenizer: FLUX's tokenizer_2/tokenizer_config.json has model_max_length 512, the longest prompt
# FluxPipeline accepts (max_sequence_length <= 512).
T5_MAX_LENGTH = 512
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in every T5 vocabulary
T5_EXTRA_IDS = 100
SPACE = "▁"  # sentencepiece's word-boundary mark (U+2581)
# Unigram log-probabilities. Every piece scores within [-10, -8], so a segmentation into k pieces scores within
# [-10k, -8k] and one piece always beats two: the tokenizer takes the fewest pieces, and among those whole words.
WHOLE_WORD_SCORE = -8.0
SUBWORD_SCORE = -9.0
CHARACTER_SCORE = -10.0
# Every printable ASCII character, Latin-1's letters and signs, and the typographic punctuation of ordinary
# English text, so that an English prompt never tokenizes to <unk>.
CHARACTERS = (
    [chr(code) for code in range(0x21, 0x7F)]
    + [chr(code) for code in range(0xA1, 0x100) if code != 0xAD]
    + list("‘’“”–—…•€")
)


def _check_size(size: str) -> None:
    if size not in ("full", "tiny"):
        raise ValueError(f"size must be 'full' (FLUX.1's real geometry) or 'tiny' (toy widths), got {size!r}")


def flux_transformer_config(size: Size = "full", *, guidance_embeds: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``FluxTransformer2DModel``: FLUX.1-dev's (``guidance_embeds=True``, the guidance-
    distilled model that reads the guidance scale as an input) or FLUX.1-schnell's (``False``), at ``size``."""
    _check_size(size)
    base = FLUX_TRANSFORMER if size == "full" else TINY_FLUX_TRANSFORMER
    return {**base, "guidance_embeds": guidance_embeds}


def flux_vae_config(size: Size = "full") -> dict[str, Any]:
    """Keyword arguments of FLUX.1's ``AutoencoderKL`` at ``size`` (both share the latent layout: 16 channels,
    8x downsampling, the same scaling and shift factors, no quant convs)."""
    _check_size(size)
    return dict(FLUX_VAE if size == "full" else TINY_FLUX_VAE)


def flux_scheduler_config(guidance_embeds: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``FlowMatchEulerDiscreteScheduler``: FLUX.1-dev's dynamic shift when
    ``guidance_embeds`` (dev), FLUX.1-schnell's unshifted schedule otherwise."""
    return dict(FLUX_DEV_SCHEDULER if guidance_embeds else FLUX_SCHNELL_SCHEDULER)


def flux_t5_config(size: Size = "full", *, vocab_size: int, num_layers: int | None = None) -> Any:
    """The ``T5Config`` of FLUX's second text encoder at ``size``, over a vocabulary of ``vocab_size`` tokens
    (``len(tiny_t5_tokenizer())`` here), with ``num_layers`` overriding the depth when given."""
    from transformers import T5Config

    _check_size(size)
    sizes = dict(T5_XXL_ENCODER if size == "full" else TINY_T5_ENCODER)
    if num_layers is not None:
        sizes["num_layers"] = num_layers
    # T5 v1.1 does not tie its input and output embeddings; ids as in every T5 vocabulary.
    return T5Config(
        vocab_size=vocab_size,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **sizes,
    )


def _clip_words() -> list[tuple[str, bool]]:
    """The ASCII entries of the tiny CLIP vocabulary as ``(text, is_whole_word)``, in the file's order.

    CLIP's BPE marks a word's last piece with ``</w>``; an entry with the mark that is a word by itself is a
    whole word, one without is the start or middle of a longer word. Non-ASCII entries are CLIP's byte-level
    encoding of UTF-8 (``Ã©`` for ``é``), not text, and are left out.
    """
    folder = resources.files(TOKENIZER_PACKAGE) / TOKENIZER_FOLDER
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    words = []
    for entry in vocab:
        whole = entry.endswith("</w>")
        text = entry[: -len("</w>")] if whole else entry
        special = text.startswith("<|") and text.endswith("|>")  # <|startoftext|>, <|endoftext|>
        if text and text.isascii() and text.isprintable() and not special and not any(c.isspace() for c in text):
            words.append((text, whole))
    return words


def _t5_pieces() -> list[tuple[str, float]]:
    """The Unigram vocabulary in T5's layout: ``<pad>``, ``</s>``, ``<unk>``, the pieces, then the sentinels
    ``<extra_id_99>`` ... ``<extra_id_0>`` (transformers' T5Converter appends them in that order, so that
    ``<extra_id_0>`` is the last id, 32099 in T5's own vocabulary).

    Pieces, as sentencepiece writes them: ``▁word`` starts a word, ``word`` continues one. Each CLIP entry gives
    a word start (and its capitalised form, since T5 is cased and prompts start sentences) and, when longer than
    one character, a continuation (``▁water`` + ``color``); single characters cover everything else.
    """
    scores: dict[str, float] = {SPACE: CHARACTER_SCORE}
    for text, whole in _clip_words():
        start = WHOLE_WORD_SCORE if whole else SUBWORD_SCORE
        scores.setdefault(SPACE + text, start)
        if text[0].islower():
            scores.setdefault(SPACE + text[0].upper() + text[1:], start)
        if len(text) > 1:
            scores.setdefault(text, SUBWORD_SCORE)
    for character in CHARACTERS:
        scores.setdefault(character, CHARACTER_SCORE)
    sentinels = [f"<extra_id_{number}>" for number in reversed(range(T5_EXTRA_IDS))]
    return [(token, 0.0) for token in T5_SPECIALS] + list(scores.items()) + [(token, 0.0) for token in sentinels]


def tiny_t5_tokenizer() -> Any:
    """A T5-style tokenizer built in code, offline and deterministic, for FLUX's ``tokenizer_2``.

    The real one (google/t5-v1_1-xxl's sentencepiece model, 32,100 tokens) cannot be downloaded here; this one
    has T5's layout (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, 100 ``<extra_id_N>`` sentinels last), T5's
    pre-tokenizer (whitespace split, then sentencepiece's ``▁`` prepended to every word) and post-processor
    (``</s>`` after every sequence), and about 4,300 pieces taken from the tiny CLIP vocabulary, so that a story
    prompt takes about one token per word, as it does with T5. The pre-tokenizer and decoder are exactly those
    transformers 5's ``T5Tokenizer`` rebuilds when it loads a ``tokenizer.json``, so a saved copy
    (``save_pretrained``, as ``FluxPipeline.save_pretrained`` writes ``tokenizer_2``) loads back identical.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    # transformers 4: the tokenizers-backed T5 tokenizer; transformers 5: an alias of T5Tokenizer, now that one.
    from transformers import T5TokenizerFast

    pieces = _t5_pieces()
    backend = Tokenizer(Unigram(pieces, unk_id=T5_SPECIALS.index("<unk>"), byte_fallback=False))
    # As t5-v1_1's tokenizer.json (and transformers' T5Tokenizer.__init__): no lowercasing, words split on
    # whitespace, "▁" in front of each.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    sentinels = [token for token, _ in pieces[-T5_EXTRA_IDS:]]
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in (*T5_SPECIALS, *sentinels)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"],
        pair=["$A", "</s>", "$B", "</s>"],
        special_tokens=[("</s>", T5_SPECIALS.index("</s>"))],
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=T5_EXTRA_IDS,
        model_max_length=T5_MAX_LENGTH,
    )


def tiny_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict[str, Any]:
    """Components of a ``diffusers.FluxPipeline``: FLUX.1's structure at toy widths, on the CPU in fp32.

    ``guidance_embeds`` picks FLUX.1-dev (a guidance embedder in the transformer, the dynamically shifted
    schedule) or FLUX.1-schnell (neither). A 128 px image has 16x16 latents of 16 channels, packed 2x2 into
    8x8 = 64 image tokens of 64 channels; a 2-step image takes about 0.1 s on one CPU thread. Every module is
    built under its own seed (``seed``, ``seed + 1``, ...), so the same seed gives bit-identical weights without
    touching the caller's random state.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    with seeded(seed):
        transformer = FluxTransformer2DModel(**flux_transformer_config("tiny", guidance_embeds=guidance_embeds))
    with seeded(seed + 1):
        vae = AutoencoderKL(**flux_vae_config("tiny"))
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    with seeded(seed + 3):
        text_encoder_2 = T5EncoderModel(flux_t5_config("tiny", vocab_size=len(tokenizer_2)))
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**flux_scheduler_config(guidance_embeds)),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": tokenizer_2,
        "transformer": transformer.eval(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> Any:
    """A complete tiny ``diffusers.FluxPipeline`` (FLUX.1-dev's layout, or schnell's without
    ``guidance_embeds``), on the CPU in fp32."""
    from diffusers import FluxPipeline

    return FluxPipeline(**tiny_flux_components(seed, guidance_embeds))


def random_flux_components(
    *,
    device: str = "cpu",
    dtype: Any = None,
    seed: int = 0,
    guidance_embeds: bool = True,
    double_blocks: int | None = None,
    single_blocks: int | None = None,
    t5_layers: int | None = None,
) -> dict[str, Any]:
    """Components of a ``diffusers.FluxPipeline`` with FLUX.1's real architecture and random weights, created
    directly on ``device`` (fast on a GPU; ``"meta"`` allocates nothing) and cast to ``dtype`` (default fp32).

    For measuring speed and memory where the weights cannot be downloaded; the images are noise. The configs
    are FLUX.1-dev's (``guidance_embeds=True``) or FLUX.1-schnell's: a 12B-parameter transformer, the 16-channel
    VAE, CLIP ViT-L/14's text tower and T5 v1.1 XXL's 4.8B-parameter encoder. ``double_blocks`` (default 19),
    ``single_blocks`` (default 38) and ``t5_layers`` (default 24) override the depths, at full width, for CPU
    benchmarks and tests where the whole model does not fit in memory (fp32: about 48 GB for the transformer and
    19 GB for T5) or takes too long to initialise. Each module is cast as soon as it is built, so the peak is one
    module in fp32 plus the others in ``dtype``.

    The text encoders use the tiny tokenizers' vocabularies: T5's embedding table has ``len(tiny_t5_tokenizer())``
    (about 4,400) rows instead of the real 32,128, about 114M parameters fewer (0.23 GB in bf16: 2.4% of the
    T5 encoder's 4.76B, under 1% of the pipeline); CLIP's has about 1,900 rows instead of 49,408 (36M fewer).
    An embedding lookup costs the same at any vocabulary size, so timings do not change.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5EncoderModel

    dtype = dtype or torch.float32
    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    transformer_config = flux_transformer_config("full", guidance_embeds=guidance_embeds)
    if double_blocks is not None:
        transformer_config["num_layers"] = double_blocks
    if single_blocks is not None:
        transformer_config["num_single_layers"] = single_blocks
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **CLIP_L_TEXT,
    )
    t5_config = flux_t5_config("full", vocab_size=len(tokenizer_2), num_layers=t5_layers)

    def build(offset: int, make: Callable[[], Any]) -> Any:
        with seeded(seed + offset), torch.device(device):
            module = make()
        # As a torch module: diffusers' ModelMixin.to(dtype=...) warns about fp32-only modules these have none of.
        return torch.nn.Module.to(module, dtype=dtype).eval()

    components = {
        "transformer": build(0, lambda: FluxTransformer2DModel(**transformer_config)),
        "vae": build(1, lambda: AutoencoderKL(**flux_vae_config("full"))),
        "text_encoder": build(2, lambda: CLIPTextModel(clip_config)),
        "text_encoder_2": build(3, lambda: T5EncoderModel(t5_config)),
    }
    # The scheduler holds CPU tensors: built outside the device context.
    components.update(
        scheduler=FlowMatchEulerDiscreteScheduler(**flux_scheduler_config(guidance_embeds)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        image_encoder=None,
        feature_extractor=None,
    )
    return components
