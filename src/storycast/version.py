"""storycast's version, for the modules that record it (manifests, reports, exports) without importing the package
front (``storycast/__init__.py``, which names the whole library)."""

__version__ = "0.1.0"
