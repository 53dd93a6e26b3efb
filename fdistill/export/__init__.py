"""Exported students: the one-step/K-step diffusers pipeline and the Stable-Diffusion export."""
