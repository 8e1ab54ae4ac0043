"""The autoencoder family beyond the plain convolutional one; each registers itself by name."""

from __future__ import annotations
