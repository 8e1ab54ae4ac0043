"""bench/gpu_bench.py's part 1: the bare training step of the default model at 128 px, images/s.

Top-level imports stay light (stdlib + bench/common.py): bench/gpu_bench.py imports this
module, and its spawned workers and build_index child re-import that file.
"""

from __future__ import annotations

import time
from typing import Any

from common import rate

TRAIN_SIZE = 128


def training(device: Any, batch: int, seconds: float, cap: float) -> dict[str, Any]:
    """Images/s of the project's training step at 128 px, timed for about `seconds` after warm-up."""
    import torch

    from encoder import ModelConfig, create_model
    from encoder.augment import augment_batch

    t_part = time.perf_counter()
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = create_model(ModelConfig(image_size=TRAIN_SIZE)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    cache = torch.randint(0, 256, (batch * 4, 3, TRAIN_SIZE, TRAIN_SIZE), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        x = cache[(i % 4) * batch : (i % 4 + 1) * batch].float().div_(255.0)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        inp, target = augment_batch(x, "invariant", gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _, _ = model.training_loss(inp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    warm = 5 if cuda else 2
    for i in range(warm):  # cuDNN autotuning, the allocator, AdamW's state
        step(i)
    sync()
    # Timed in chunks between synchronisations, until `seconds` have passed (or the part's cap nears).
    chunk, steps = (10 if cuda else 1), 0
    stop = t_part + cap
    t0 = time.perf_counter()
    while True:
        for _ in range(chunk):
            step(warm + steps)
            steps += 1
        sync()
        now = time.perf_counter()
        if now - t0 >= seconds or now >= stop - (now - t0) / steps * chunk:
            break
    dt = time.perf_counter() - t0
    return {
        "status": "ok",
        "model": "default conv autoencoder, ModelConfig(image_size=128)",
        "size": TRAIN_SIZE,
        "batch": batch,
        "bf16_autocast": cuda,
        "channels_last": cuda,
        "warmup_steps": warm,
        "steps": steps,
        "seconds": round(dt, 3),
        "images_per_s": rate(steps * batch, dt),
        "step": "augment_batch('invariant') + training_loss + backward + clip_grad_norm_ + AdamW, no loss read",
    }
