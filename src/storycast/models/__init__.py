"""Model presets, loading (hub id, folder, single file, tiny random models) and placement."""
