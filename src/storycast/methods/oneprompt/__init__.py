"""1Prompt1Story (Liu et al., ICLR 2025; arXiv 2501.13554): a story drawn from one prompt, training-free.

- ``prompts``: the identity prompt and frame phrases in one prompt, the circular window of long stories,
  and where each phrase's tokens sit;
- ``svr``: Singular-Value Reweighting of the prompt embeddings (suppress the other frames, express this one);
- ``settings`` / ``method``: the authors' defaults and the frame-by-frame SDXL pipeline;
- the attention itself is ``storycast.attention.identity_prompt`` (Identity-Preserving Cross-Attention).
"""
