"""StoryDiffusion (Zhou et al., NeurIPS 2024; arXiv 2405.01434): Consistent Self-Attention, training-free.

- ``settings``: the method's settings with the authors' defaults (their low-VRAM app);
- ``method``: identity frames per character drawn jointly (write), every other frame reading their tokens;
- the attention itself is ``storycast.attention.consistent`` (a member of the attention family).
"""
