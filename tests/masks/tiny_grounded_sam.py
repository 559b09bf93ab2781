"""Tiny random-weight GroundingDINO (Swin + BERT) and SAM built from configs, for mask-provider tests."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "man", "woman", "girl", "astro", "##naut"]


# ---------------------------------------------------------------------------------------------------------------
# Tiny random-weight GroundingDINO (Swin + BERT) and SAM, built from configs.
# ---------------------------------------------------------------------------------------------------------------


def _tiny_detector(tokenizer):
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    # d_model must be a multiple of 32 (GroupNorm(32)); decoder_layers >= 2 (tied box heads).
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=12,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=32,
    )
    return GroundingDinoForObjectDetection(config).eval()


def _tiny_segmenter():
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=16,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=8,
        mlp_dim=32,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
    )
    return SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).eval()


def build_tiny_grounded_sam(folder: Path, shortest_edge: int = 64):
    """(detector, detector_processor, segmenter, segmenter_processor), seeded, fp32 on the CPU; ``folder`` gets
    the tiny BERT vocabulary. The detector sees images resized to ``shortest_edge`` (at least 64: its coarsest
    feature level must keep more than one pixel)."""
    import transformers
    from transformers import BertTokenizer, GroundingDinoProcessor, SamProcessor

    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    pil = getattr(transformers, "GroundingDinoImageProcessorPil", transformers.GroundingDinoImageProcessor)
    sam_pil = getattr(transformers, "SamImageProcessorPil", transformers.SamImageProcessor)
    detector_processor = GroundingDinoProcessor(
        image_processor=pil(size={"shortest_edge": shortest_edge, "longest_edge": shortest_edge * 3 // 2}),
        tokenizer=tokenizer,
    )
    segmenter_processor = SamProcessor(
        image_processor=sam_pil(
            size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_pad_size={"height": 16, "width": 16}
        )
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        detector = _tiny_detector(tokenizer)
        segmenter = _tiny_segmenter()
    return detector, detector_processor, segmenter, segmenter_processor


def save_tiny_grounded_sam(folder: Path, shortest_edge: int = 128) -> tuple[Path, Path]:
    """Write the tiny detector and segmenter as save_pretrained folders; returns (detector, segmenter) folders."""
    detector, detector_processor, segmenter, segmenter_processor = build_tiny_grounded_sam(folder, shortest_edge)
    detector.save_pretrained(folder / "dino")
    detector_processor.save_pretrained(folder / "dino")
    segmenter.save_pretrained(folder / "sam")
    segmenter_processor.save_pretrained(folder / "sam")
    return folder / "dino", folder / "sam"
