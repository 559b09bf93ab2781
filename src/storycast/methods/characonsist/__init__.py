"""CharaConsist (Wang et al., ICCV 2025; arXiv 2507.11533): point-tracking attention, adaptive token merge and
decoupled foreground/background control on FLUX.1, training-free.

- ``settings``: the method's settings with the authors' defaults;
- ``points``: the math (masks from text attention, point matching, re-positioned keys, the merge), pure functions;
- ``prompts``: which text tokens are the background's and each character's;
- ``attention``: the single-stream processor and its per-draw state;
- ``method``: identity frames first, every other frame reading the identity frames of the characters it names.
"""
