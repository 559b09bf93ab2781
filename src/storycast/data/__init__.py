"""Training data for trained methods: StoryDB-style character sets (format) and their builder."""
