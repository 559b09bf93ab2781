"""Attention processors and the choice of layers they go on."""
