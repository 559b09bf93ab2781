"""IdentityStory (Zhou, Lin et al., AAAI 2026; arXiv 2512.23519) on SDXL + PhotoMaker v1.

- ``settings``: the method's settings with the authors' defaults;
- ``prompts``: search, region and global prompts as the authors build them;
- ``injection``: Re-denoising Identity Injection (stage 1 text-only, stage 2 regional identity passes);
- ``identities``: the identity finder (library lookups, discovery) with a method's PhotoMaker and budget;
- ``method``: the ``identitystory`` story method tying them to the runner.

Iterative Identity Discovery (candidates -> ID embeddings -> iterative SVD filter -> mean) and the identity library
lookups are :mod:`storycast.identity.discovery`; ``identities`` ties them to a method, for this method and for
``photomaker``.
"""
