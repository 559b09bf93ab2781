"""PhotoMaker (Li et al., CVPR 2024) as a story baseline: each frame drawn with its characters' ID embeddings
fused into their class tokens; see ``method.py``."""
