"""DDP on CPU: two gloo processes under torchrun take exactly the steps one process takes on the same global batch."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY

# Real learning (a high rate, no warm-up) and accumulation, so that a wrongly scaled gradient would show in the loss.
FLAGS = [f'--{k}={v}' for k, v in TINY.items()] + [
    '--eval_interval=100', '--eval_iters=2', '--log_interval=1', '--n_samples=0', '--warmup_iters=1',
    '--learning_rate=1e-2', '--grad_accum=2']


def losses(out_dir):
    with open(os.path.join(out_dir, 'train_log.jsonl')) as f:
        return [(r['step'], loss) for r in map(json.loads, f) if 'train' in r for loss in r['train'].values()]


def torchrun(*args):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           'train.py', *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_match_one_process(picturebook_dir, run_script, tmp_path):
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    common = [f'--data_dir={picturebook_dir}', *FLAGS]
    p = run_script('train.py', *common, '--batch_size=8', f'--out_dir={one}', '--max_iters=6')
    assert p.returncode == 0, p.stderr
    p = torchrun(*common, '--batch_size=4', f'--out_dir={two}', '--max_iters=6')
    assert p.returncode == 0, p.stderr
    assert '2 processes' in p.stdout and p.stdout.count('done: 6 steps') == 1, p.stdout  # only the first one speaks
    a, b = losses(one), losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7)), (a, b)
    assert a[0][1] - a[-1][1] > 0.3, a  # it learned, so the steps matter
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-5), (a, b)
    # Resuming under DDP goes on exactly as resuming one process does.
    p = run_script('train.py', *common, '--batch_size=8', f'--out_dir={one}', '--max_iters=9', '--init_from=resume')
    assert p.returncode == 0, p.stderr
    p = torchrun(*common, '--batch_size=4', f'--out_dir={two}', '--max_iters=9', '--init_from=resume')
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('resuming from') == 1
    a, b = losses(one), losses(two)
    assert [s for s, _ in b] == list(range(1, 10))
    for (_, x), (_, y) in zip(a[6:], b[6:]):
        assert x == pytest.approx(y, abs=1e-5)
