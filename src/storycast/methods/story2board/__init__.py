"""Story2Board (Dinkevich et al., 2025; arXiv 2508.09983): latent panel anchoring and reciprocal attention value
mixing on FLUX.1, training-free.

- ``settings``: the method's settings with the authors' defaults (DavidDinkevich/Story2Board@92ef110);
- ``canvas``: the storyboards of a story, the two-panel canvas, its prompt and its split (pure);
- ``ravm``: reciprocal attention value mixing, the token pairs and the blend (pure);
- ``attention``: the per-canvas state, the joint-attention processor that mixes, and the block hooks that anchor;
- ``method``: the reference row of each storyboard, then every other frame beside its anchored reference panel.
"""
