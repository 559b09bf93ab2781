"""Small helpers shared by every part of storycast (I/O, torch, optional imports)."""
