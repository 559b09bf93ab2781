"""Storynizor (Ma et al., AAAI 2025): ID-Synchronizer and ID-Injector; see ``method.py``."""
