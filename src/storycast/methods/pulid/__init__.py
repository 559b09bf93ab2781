"""PuLID-FLUX (Guo et al., NeurIPS 2024; ToTheBeginning/PuLID v0.9.1) as a story baseline on FLUX: each frame drawn
with its character's reference photo (or an identity discovered from its description) through PuLID's ID branch;
see ``method.py``."""
