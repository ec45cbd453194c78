"""bench.py and the MFU figures it and train.py report."""
import torch

import train
from conftest import TINY


def test_bench_prints_one_table(run_script, picturebook_dir):
    p = run_script('bench.py', f'--data_dir={picturebook_dir}', *[f'--{k}={v}' for k, v in TINY.items()],
                   '--batch_size=4', '--steps=3', '--warmup=1', '--gen_images=3')
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith('bench: tiny')):]  # after data preparation
    assert 'GFLOP/s (measured: 1024x1024 float32 matmul on cpu)' in lines[0]
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
    assert train.peak_flops(cpu, 'float32', 5e12) == (5e12, 'given by --peak_flops')
    flops, source = train.peak_flops(cpu, 'float32')
    assert 1e9 < flops < 1e14 and source == 'measured: 1024x1024 float32 matmul on cpu'
