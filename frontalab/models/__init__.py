"""Shared model library: decoders, discriminator, encoders, warp."""
