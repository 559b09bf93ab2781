"""What images show, for every part that looks at pictures: identity encoders, methods, data building, evaluation.

- ``faces``: SCRFD detection + ArcFace embeddings as ONNX models (``FaceAnalyzer``; extra ``faces``).
- ``face_geometry``: SCRFD decoding, NMS and 5-point alignment in numpy/PIL.
- ``tiny_faces``: tiny ONNX stand-ins of an insightface pack, for offline tests.
- ``features``: CLIP and DINO image (and CLIP text) features through transformers (``ClipFeatures``,
  ``DinoFeatures``).
- ``checkpoints``: loading their checkpoints, with 'not there' turned into an error naming the option to set.

Nothing heavy is imported here; import the submodule you need.
"""
