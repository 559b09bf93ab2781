"""Evaluation of story illustrations: metrics, feature extractors and face analysis.

- ``metrics``: pure functions over feature tensors (CLIP-T, CLIP-I/DINO-I, Face-Sim, Q-Align, aggregation).
- ``extractors``: CLIP and DINO features through transformers (``ClipFeatures``, ``DinoFeatures``).
- ``faces``: SCRFD detection + ArcFace embeddings as ONNX models (``FaceAnalyzer``; extra ``faces``).
- ``face_geometry``: SCRFD decoding, NMS and 5-point alignment in numpy/PIL.
- ``tiny_faces``: tiny ONNX stand-ins of an insightface pack, for offline tests.
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
