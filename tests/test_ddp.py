"""DDP on CPU: two gloo processes under torchrun take exactly the steps one process takes on the same global batch,
every tensor they hand to a collective lives on the run's device (tests/device_discipline.py plays the GPU's part),
and a checkpoint resumes under another number of processes, saying that the run is no longer exact."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY

# Real learning (a high rate, no warm-up) and accumulation, so that a wrongly scaled gradient would show in the loss;
# float32, where the sums over a split batch are exact enough to compare (in bfloat16 each process rounds its own).
FLAGS = [f'--{k}={v}' for k, v in TINY.items()] + [
    '--eval_interval=100', '--eval_iters=2', '--log_interval=1', '--n_samples=0', '--warmup_iters=1',
    '--learning_rate=1e-2', '--grad_accum=2', '--device=cpu', '--dtype=float32']


def losses(out_dir):
    """(step, {style: loss}) of every progress line."""
    with open(os.path.join(out_dir, 'train_log.jsonl')) as f:
        return [(r['step'], r['train']) for r in map(json.loads, f) if 'train' in r]


def torchrun(*args):
    """train.py ARGS in two gloo processes, every collective's tensors checked (tests/device_discipline.py)."""
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           os.path.join('tests', 'device_discipline.py'), 'train.py', *args], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)


def assert_close(a, b):
    assert [s for s, _ in a] == [s for s, _ in b], (a, b)
    for (_, x), (_, y) in zip(a, b):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], abs=1e-5) for k in x), (a, b)


def test_two_gloo_processes_match_one_process(picturebook_dir, run_script, tmp_path):
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    common = [f'--data_dir={picturebook_dir}', *FLAGS]
    p = run_script('train.py', *common, '--batch_size=8', f'--out_dir={one}', '--max_iters=6')
    assert p.returncode == 0, p.stderr
    p = torchrun(*common, '--batch_size=4', f'--out_dir={two}', '--max_iters=6')
    assert p.returncode == 0, p.stderr
    assert '2 processes' in p.stdout and p.stdout.count('done: 6 steps') == 1, p.stdout  # only the first one speaks
    assert p.stderr.count('checked') == 2 and 'checked 0 collectives' not in p.stderr, p.stderr  # the check ran
    a, b = losses(one), losses(two)
    assert [s for s, _ in a] == list(range(1, 7)), a
    assert all(set(x) == {'short', 'long'} for _, x in a), a  # --grad_accum=2: both styles every step, both logged
    assert a[0][1]['short'] - a[-1][1]['short'] > 0.3, a  # it learned, so the steps matter
    assert_close(a, b)
    # Resuming under DDP goes on exactly as resuming one process does.
    saved_by_one, saved_by_two = str(tmp_path / 'saved_by_one'), str(tmp_path / 'saved_by_two')
    shutil.copytree(one, saved_by_one)
    shutil.copytree(two, saved_by_two)
    p = run_script('train.py', *common, '--batch_size=8', f'--out_dir={one}', '--max_iters=9', '--init_from=resume')
    assert p.returncode == 0, p.stderr
    p = torchrun(*common, '--batch_size=4', f'--out_dir={two}', '--max_iters=9', '--init_from=resume')
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('resuming from') == 1 and 'no longer' not in p.stdout
    a, b = losses(one), losses(two)
    assert [s for s, _ in b] == list(range(1, 10))
    assert_close(a[6:], b[6:])
    # A checkpoint saved by one process resumes under two, and the reverse: said, not an IndexError.
    p = torchrun(f'--out_dir={saved_by_one}', '--max_iters=7', '--init_from=resume', '--device=cpu')
    assert p.returncode == 0 and 'done: 7 steps' in p.stdout, p.stderr
    assert 'saved by 1 process and this run has 2' in p.stdout and 'no longer the run 1 would have taken' in p.stdout, p.stdout
    p = run_script('train.py', f'--out_dir={saved_by_two}', '--max_iters=7', '--init_from=resume')
    assert p.returncode == 0 and 'done: 7 steps' in p.stdout, p.stderr
    assert 'saved by 2 processes and this run has 1' in p.stdout, p.stdout
