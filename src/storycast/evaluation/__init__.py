"""Evaluation of story illustrations: metrics, the extractors each metric reads, scoring and reports.

The feature extractors themselves (CLIP and DINO features, SCRFD + ArcFace faces) are shared with the rest of
storycast in :mod:`storycast.vision`; ``Evaluator.extractor`` picks and loads the one each metric needs.

- ``metrics``: pure functions over feature tensors (CLIP-T, CLIP-I/DINO-I, Face-Sim, Q-Align, aggregation).
- ``presets``: each paper's protocol as an ``EvalPreset`` (identitystory, 1prompt1story, consistory).
- ``published``: the papers' published rows, as data with their sources.
- ``scoring``: pure functions from a story's features to its metric values, and stories to a split.
- ``quality``: Q-Align scorers (OneAlign on a GPU; a tiny stand-in for tests).
- ``cache``: features on disk, keyed by image hash and extractor identity.
- ``runfolders``: reading run folders and trees of them.
- ``evaluator``: ``Evaluator`` (extractors loaded once, features cached, scores.json / results.* written), ``compare``.
- ``report``: results.json content and the Markdown tables; ``pictures``: contact sheets and charts (PIL).
- ``benchmark``: suites (ConsiStory-Human splits, folders) and ``run_benchmark`` (generate then score, resumable).

Nothing heavy is imported here; import the submodule you need.
"""
