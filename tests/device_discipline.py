"""
Run a script (train.py) under torchrun with a check on every tensor handed to a collective: it must live on the run's
device. On a GPU a tensor made without naming a device is on the CPU, and NCCL, the GPUs' backend, cannot sum it:
the run stops with an error at its first collective. Our machines have only CPUs, where every tensor is on the run's
device, so this check plays the GPU's part: it marks every tensor made on the CPU by default (a factory such as
torch.tensor or torch.from_numpy without a device), follows the mark through every operation on it, takes it off
when a tensor is moved to a named device (.to(device)), and refuses a marked tensor in a collective.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/device_discipline.py train.py --device=cpu ...

It prints, from each process at exit, how many collectives it checked.
"""
import atexit
import os
import runpy
import sys

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = '_made_on_cpu_by_default'
FACTORIES = {torch.tensor, torch.as_tensor, torch.from_numpy, torch.zeros, torch.ones, torch.empty, torch.full,
             torch.arange, torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}


def tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for item in x:
            yield from tensors(item)
    elif isinstance(x, dict):
        for item in x.values():
            yield from tensors(item)


def mark(out, on):
    for t in tensors(out):
        if on:
            setattr(t, MARK, True)
        elif hasattr(t, MARK):
            delattr(t, MARK)


def names_a_device(args, kwargs):
    return kwargs.get('device') is not None or any(isinstance(a, (str, torch.device)) for a in args[1:])


class MarkCPUTensors(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES:
            if kwargs.get('device') is None:
                mark(out, True)
        elif func in MOVES and names_a_device(args, kwargs):
            mark(out, False)  # moved to a named device (on a CPU run .to(cpu) returns the tensor itself)
        elif func is torch.Tensor.cpu or any(hasattr(t, MARK) for t in tensors((args, kwargs))):
            mark(out, True)
        return out


checked = [0]


def checking(collective):
    def check(*args, **kwargs):
        for t in tensors((args, kwargs)):
            assert not hasattr(t, MARK), (f'{collective.__name__} was handed a tensor made on the CPU by default '
                                          f'(shape {tuple(t.shape)}): on a GPU, NCCL cannot reduce it')
            assert t.device == torch.device(DEVICE), f'{collective.__name__} was handed a tensor on {t.device}'
        checked[0] += 1
        return collective(*args, **kwargs)
    return check


DEVICE = 'cpu'
for name in ('all_reduce', 'all_gather', 'all_gather_into_tensor', 'reduce_scatter', 'reduce_scatter_tensor',
             'broadcast', 'reduce', 'all_to_all_single'):
    setattr(dist, name, checking(getattr(dist, name)))
atexit.register(lambda: print(f'device discipline: rank {os.environ.get("RANK")} checked {checked[0]} collectives',
                              file=sys.stderr))

if __name__ == '__main__':
    script, sys.argv = sys.argv[1], sys.argv[1:]
    sys.path.insert(0, ROOT)
    with MarkCPUTensors():
        runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
