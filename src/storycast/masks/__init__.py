"""Character masks: pure mask math (``storycast.masks.ops``) and, later, mask providers."""
