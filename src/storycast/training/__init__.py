"""Training storycast's trained methods (Storynizor): losses, reference shuffling, the accelerate loop."""
