"""
The machine a run uses, said once for train.py and bench.py: the precision it computes in (bfloat16 autocast on a
GPU or a CPU that has it), how a CPU keeps the memory of freed tensors, and the peak FLOP/s that MFU (the model's
FLOPs per second) is a share of: a known GPU's bf16 peak, or on a CPU the best of a few matmuls measured at start-up.
"""
import ctypes
import time
from contextlib import nullcontext

import torch

from cli import UserError



def precision(device, dtype):
    """(dtype, autocast context) for --dtype: 'auto' is bfloat16 autocast on a GPU or a CPU that has it in hardware
    (tiny's step: 1.96x faster than float32 on our 2 cores, README's record table), else float32. Weights and
    optimiser state stay float32. On CUDA, float32 matmuls may use TF32 tensor cores as well."""
    if dtype not in ('auto', 'float32', 'bfloat16'):
        raise UserError(f'--dtype={dtype}: use auto, float32 or bfloat16')
    if dtype == 'auto':
        dtype = 'bfloat16' if device.type == 'cuda' and torch.cuda.is_bf16_supported() or \
            device.type == 'cpu' and cpu_has_bfloat16() else 'float32'
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return dtype, nullcontext() if dtype == 'float32' else torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_has_bfloat16():
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX-512 BF16 or AMX), as oneDNN reports it: there a
    bf16 matmul is several times faster than a float32 one (5x on our 2 cores); elsewhere it is emulated, and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def keep_freed_memory(device):
    """On a CPU with glibc (Linux), keep the memory of freed tensors in the process instead of giving it back to the
    kernel. A training step frees and allocates the same large activations every step; given back, each comes back
    as fresh pages that the kernel must hand over and zero one fault at a time. On our 2-core machine that was a
    fifth of a mini step's CPU time (README, "Fast on one machine"). The price: memory stays at its peak between
    steps."""
    if device.type != 'cpu':
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:  # macOS, Windows, musl: another allocator, nothing to set
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap, not from fresh mappings
    libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD: never hand the top of the heap back


GPU_PEAK_BF16 = {  # dense bf16 tensor-core FLOP/s, by a part of the name torch.cuda.get_device_name() gives
    'H100 PCIe': 756e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12,
    'A10': 125e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12,
}


def peak_flops(device, dtype, given=0.0):
    """(FLOP/s, where that figure comes from): --peak_flops if given, a known GPU's bf16 peak, or on a CPU (and
    an unknown GPU) the best of a few 1024 x 1024 matmuls in the training dtype, measured once at start-up."""
    if given:
        return given, 'given by --peak_flops'
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        for part, flops in GPU_PEAK_BF16.items():
            if part in name:
                return flops, f'{name} bf16 peak'
    n, dtype = 1024, getattr(torch, dtype)
    g = torch.Generator(device).manual_seed(0)  # its own: the run's random state stays the run's (exact resume)
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=g) for _ in range(2))
    best = 0.0
    for _ in range(6):  # the first round warms up
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == 'cuda':
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best, f'measured: {n}x{n} {dtype} matmul on {device}'.replace('torch.', '')
