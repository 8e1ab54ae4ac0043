"""Embedding images with a trained model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .calibration import load_calibration
from .checkpoint import load_model, model_id, read_config
from .device import conv_layout, pick_device
from .fuse import fold_batchnorm
from .images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .search_vector import encode
from .vlad import load_vlad


class Encoder:
    """A trained model, ready to turn images into L2-normalised float32 search vectors.

    Thread-safe for concurrent calls (inference only, no mutable state beyond torch's).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | None = None,
        *,
        batch_size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = pick_device(device)
        self.model = load_model(self.model_dir, self.device)
        fold_batchnorm(self.model)  # eval-only model: BatchNorm folded into the convs
        self.config, self.meta = read_config(self.model_dir)
        #: Centring/whitening fitted on the training images (None for older models): the
        #: cosine of two images' vectors then reads 0 for unrelated ones in any collection.
        self.calibration = load_calibration(self.model_dir)
        #: The VLAD pooling of the trunk's local features (encoder/vlad.py) when the model was
        #: trained with ``pooling="vlad"``; None: the model's own search vector.
        self.vlad = load_vlad(self.model_dir)
        if self.vlad is not None:
            self.vlad = self.vlad.to(self.device)
        self.model_id = model_id(self.model_dir)
        # Small batches are faster on a CPU (they stay in cache); GPUs want large ones.
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 32)
        self.max_pixels = max_pixels
        #: On CUDA, embedding runs in bf16 autocast on channels-last activations: tensor cores and
        #: memory layout the convolutions want, about twice the fp32 speed on the bench's GPUs; the
        #: vectors stay float32, unit length, within ~1e-2 in cosine of fp32's. Elsewhere fp32 as ever.
        self.fast_cuda = self.device.type == "cuda"
        self.layout = conv_layout(self.device)
        self.model = self.model.to(memory_format=self.layout)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def dim(self) -> int:
        return self.model.embedding_dim if self.vlad is None else self.vlad.dim

    def _batches(self, pixels: np.ndarray):
        for s in range(0, len(pixels), self.batch_size):
            chunk = pixels[s : s + self.batch_size]
            if not chunk.flags.writeable or not chunk.flags.c_contiguous:  # torch wants its own writable memory
                chunk = np.array(chunk, copy=True, order="C")
            x = torch.from_numpy(chunk)
            # (B, S, S, 3) permuted is already channels-last, the layout the convolutions want
            yield x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=self.layout)

    @torch.inference_mode()
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 letterboxed images -> (N, D) float32, unit length."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        z = torch.cat([self.encode_tensor(x) for x in self._batches(pixels)])
        z = torch.nn.functional.normalize(z, dim=1).cpu().numpy().astype(np.float32, copy=False)
        return z if self.calibration is None else self.calibration.apply(z)

    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] on this encoder's device -> (B, D) float32 search vectors
        before normalisation and calibration: what :meth:`embed_pixels` does to each batch, for
        callers that prepared the batch on the device themselves (bench/gpu_bench.py's nvJPEG path)."""
        return self._encode_fast(x) if self.fast_cuda else encode(self.model, self.vlad, x)

    def _encode_fast(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) on CUDA -> (B, D) float32: bf16 autocast, channels-last (see ``fast_cuda``)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            x = x.contiguous(memory_format=self.layout)
            if self.vlad is None:
                return self.model.encode(x).float()
            maps = self.model.trunk.maps(x)
        return self.vlad([m.float() for m in self.vlad.stages(x, maps)])  # words and residuals in float32

    @property
    def has_copy_vectors(self) -> bool:
        """Whether near-duplicates are judged on :meth:`copy_vectors` instead of the search
        vectors: when the search vector is VLAD, which tells kinds of picture apart better
        and copies of one picture worse (docs/benchmarks.md, "VLAD over the trunk's local features")."""
        return self.vlad is not None

    @torch.inference_mode()
    def copy_vectors(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 letterboxed images -> (N, model.embedding_dim) float32, unit length:
        the model's own vector (every stage's mean feature), uncalibrated.

        Copies of one picture keep it: the median whitened cosine of an image and its JPEG-50 copy
        is 0.998 with it and 0.88 with VLAD, of an image and its half-size copy 0.998 and 0.91
        (bench/near_duplicates.py, both poolings on one model). The near-duplicate report
        compares these; search uses :meth:`embed_pixels`."""
        parts = [torch.nn.functional.normalize(self.model.encode(x).float(), dim=1) for x in self._batches(pixels)]
        dim = self.model.embedding_dim
        return torch.cat(parts).cpu().numpy().astype(np.float32) if parts else np.zeros((0, dim), np.float32)

    @torch.inference_mode()
    def reconstruction_error(self, pixels: np.ndarray) -> np.ndarray:
        """Per-image mean squared reconstruction error, (N,) float32 (the outlier score)."""
        errs = []
        for x in self._batches(pixels):
            recon = self.model.reconstruct(x, None)
            errs.append(((recon.float() - x) ** 2).mean(dim=(1, 2, 3)))
        return torch.cat(errs).cpu().numpy().astype(np.float32) if errs else np.zeros(0, np.float32)

    def load(self, source: ImageSource) -> np.ndarray:
        """Decode one image exactly as indexing does: (S, S, 3) uint8."""
        return load_image(source, self.image_size, max_pixels=self.max_pixels)

    def embed(self, sources: Sequence[ImageSource]) -> np.ndarray:
        """Decode and embed images given as paths, bytes or streams. Raises ImageLoadError on a bad one."""
        pixels = np.stack([self.load(s) for s in sources]) if sources else np.zeros((0, 1, 1, 3), np.uint8)
        return self.embed_pixels(pixels)
