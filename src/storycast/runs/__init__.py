"""Runs: drawing a story into a folder (frames, storyboard, manifest), resumable."""
