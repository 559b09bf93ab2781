"""Story-Adapter (Mao et al., arXiv 2410.06244; UCSC-VLAA/story-adapter): iterative refinement of every frame with
IP-Adapter over all frames of the previous round."""
