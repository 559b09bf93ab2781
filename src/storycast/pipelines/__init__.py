"""Shared pieces of diffusion sampling (text conditioning, noise prediction, decoding) that methods compose."""
