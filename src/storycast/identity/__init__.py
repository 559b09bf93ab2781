"""Identity building blocks: the iterative SVD filter of IdentityStory and the PhotoMaker v1 ID encoder.

Import the submodules directly (``storycast.identity.svd_filter``, ``storycast.identity.photomaker``...);
this package imports nothing so that the SVD filter does not pull in transformers.
"""
