"""bench.py, the MFU figures it and train.py report, and the CPU allocator setting that makes steps faster."""
import platform
import subprocess
import sys

import pytest
import torch

import machine
from conftest import ROOT, TINY


def test_bench_prints_one_table(run_script, picturebook_dir):
    p = run_script('bench.py', f'--data_dir={picturebook_dir}', *[f'--{k}={v}' for k, v in TINY.items()],
                   '--batch_size=4', '--steps=3', '--warmup=1', '--gen_images=3')
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith('bench: tiny')):]  # after data preparation
    dtype = machine.precision(torch.device('cpu'), 'auto')[0]  # bfloat16 where the CPU has it
    assert f'GFLOP/s (measured: 1024x1024 {dtype} matmul on cpu)' in lines[0] and f'on cpu in {dtype}' in lines[0]
    rows = dict(tuple(cell.strip() for cell in line.strip('|').split('|')) for line in lines[3:])
    assert rows['training step (median of 3)'].endswith(' ms')
    assert '% of a step' in rows['waiting for data'] and rows['MFU'].endswith('%')
    for style in ('short', 'long'):
        assert rows[f'{style}: KV cache speed-up, same greedy output'].endswith('x, yes')


def test_bench_flag_errors(run_script):
    p = run_script('bench.py', '--steps=0')
    assert p.returncode == 1 and p.stderr.strip() == 'error: --steps must be at least 1'


def test_peak_flops():
    cpu = torch.device('cpu')
    assert machine.peak_flops(cpu, 'float32', 5e12) == (5e12, 'given by --peak_flops')
    flops, source = machine.peak_flops(cpu, 'float32')
    assert 1e9 < flops < 1e14 and source == 'measured: 1024x1024 float32 matmul on cpu'


FAULTS = """
import resource, sys, torch, machine
if sys.argv[1] == 'keep':
    machine.keep_freed_memory(torch.device('cpu'))
counts = []
for _ in range(16):  # a 64 MiB activation, allocated and freed as a step would
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(2 ** 24)
    del x
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(counts[8:]))  # the heap takes up to 6 rounds to grow to its working size
"""


@pytest.mark.skipif(not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_freed_memory_stays_in_the_process():
    """machine.keep_freed_memory: once warm, allocating again what was freed costs no page faults (16,384 pages each
    time without it)."""
    def faults(mode):
        p = subprocess.run([sys.executable, '-c', FAULTS, mode], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return int(p.stdout)
    assert faults('keep') < 1000 < 8 * 16384 * 0.9 < faults('give back')
