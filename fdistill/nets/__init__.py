"""Trainable networks: the low-dimensional MLP denoiser, discriminator heads, and the UNet wrapper."""
