"""Evaluation of story illustrations: metrics, feature extractors and face analysis.

- ``metrics``: pure functions over feature tensors (CLIP-T, CLIP-I/DINO-I, Face-Sim, Q-Align, aggregation).
- ``extractors``: CLIP and DINO features through transformers (``ClipFeatures``, ``DinoFeatures``).
- ``faces``: SCRFD detection + ArcFace embeddings as ONNX models (``FaceAnalyzer``; extra ``faces``).
- ``face_geometry``: SCRFD decoding, NMS and 5-point alignment in numpy/PIL.
- ``tiny_faces``: tiny ONNX stand-ins of an insightface pack, for offline tests.

Nothing heavy is imported here; import the submodule you need.
"""
