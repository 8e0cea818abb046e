"""The compute device's memory, for the nodes' workers: telling an out-of-memory error (CUDA or CPU)
from other model errors, and handing cached CUDA blocks back to the driver after one."""

from __future__ import annotations


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error and for the CPU allocator's equivalent."""
    import torch  # already imported by the pipeline whenever a worker can raise this

    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)  # DefaultCPUAllocator


def free_cuda_cache(device) -> None:
    """torch.cuda.empty_cache() when ``device`` is a CUDA device (cached blocks back to the driver)."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()
