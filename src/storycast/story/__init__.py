"""Stories: the typed model, the file formats (ours and ConsiStory-Human), and validation."""
