"""A training run never loses a user's work: it refuses to replace a trained model, refuses a second run into the
same out_dir, saves on Ctrl-C, and a resumed run (after Ctrl-C or kill -9) takes exactly the steps an uninterrupted
run takes: the same logged losses and the same final weights."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import train
from conftest import ROOT, TRAIN_FLAGS

# A run long enough to be interrupted, with checkpoints every 10 steps and a line in the log every 2.
FLAGS = [f for f in TRAIN_FLAGS if not f.startswith(('--max_iters=', '--log_interval=', '--eval_interval='))] + [
    '--max_iters=40', '--log_interval=2', '--eval_interval=10', '--dropout=0.1']  # dropout: torch's RNG matters too


def start(data_dir, out_dir, *extra):
    return subprocess.Popen([sys.executable, 'train.py', f'--data_dir={data_dir}', f'--out_dir={out_dir}', *FLAGS,
                             *extra], cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def log_lines(out_dir):
    path = os.path.join(out_dir, 'train_log.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith('\n')]


def trajectory(out_dir):
    """What must not change: every logged loss and evaluation, in order (times and MFU may)."""
    return [(r['step'], r.get('train'), r.get('eval')) for r in log_lines(out_dir)]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)['model']


def wait_for_step(out_dir, step, p, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if any(r['step'] >= step for r in log_lines(out_dir)):
            return True
        time.sleep(0.01)
    return False


def resume(data_dir, out_dir):
    p = start(data_dir, out_dir, '--init_from=resume')
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return out


@pytest.fixture(scope='module')
def uninterrupted(picturebook_dir, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp('whole'))
    p = start(picturebook_dir, out_dir)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return out_dir


def assert_same_run(a, b):
    assert trajectory(a) == trajectory(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ctrl_c_saves_and_resume_is_exact(picturebook_dir, uninterrupted, tmp_path):
    out_dir = str(tmp_path)
    p = start(picturebook_dir, out_dir)
    assert wait_for_step(out_dir, 13, p)  # between two checkpoints
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    saved = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)['step']
    assert 13 <= saved < 40 and f'interrupted at step {saved}: saved' in out and '--init_from=resume' in out, out
    resume(picturebook_dir, out_dir)
    assert_same_run(uninterrupted, out_dir)


def sheets(out_dir):
    folder = os.path.join(out_dir, 'samples')
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize('stop_at', [10, 40], ids=['evaluation-step', 'last-step'])
def test_a_stop_on_an_evaluation_step_resumes_to_the_same_log_and_sheets(picturebook_dir, uninterrupted, tmp_path,
                                                                          monkeypatch, stop_at):
    """Ctrl-C while the step before an evaluation (step 10) or the last step (40) trains: the stop lands on that
    step, whose evaluation must still be logged and drawn, once, whether it runs before the save or after the resume.
    The signal is sent from inside the run (in this process), so that it lands on that step every time."""
    import train
    take_step = train.train_step

    def step_then_interrupt(*args):
        out = take_step(*args)
        if args[4] == stop_at - 1:  # the step being taken
            os.kill(os.getpid(), signal.SIGINT)
        return out
    monkeypatch.setattr(train, 'train_step', step_then_interrupt)
    monkeypatch.chdir(ROOT)
    try:
        train.main([f'--data_dir={picturebook_dir}', f'--out_dir={tmp_path}', *FLAGS])
    except KeyboardInterrupt:
        pass
    assert torch.load(os.path.join(tmp_path, 'ckpt.pt'), weights_only=True)['step'] == stop_at
    resume(picturebook_dir, str(tmp_path))
    assert_same_run(uninterrupted, str(tmp_path))
    assert sheets(uninterrupted) == sheets(str(tmp_path))


KILLS = int(os.environ.get('NANOVLMS_KILLS', '3'))  # NANOVLMS_KILLS=10 for the README's measurement


def test_kill_9_at_random_moments_then_resume_is_exact(picturebook_dir, uninterrupted, tmp_path):
    """kill -9 at random moments (between steps, in an evaluation, while saving), resuming each time."""
    out_dir, rng = str(tmp_path), random.Random(0)
    p = start(picturebook_dir, out_dir)
    assert wait_for_step(out_dir, 11, p)  # the first checkpoint (step 10) is on disk
    p.kill()
    p.wait()
    for _ in range(KILLS - 1):
        p = start(picturebook_dir, out_dir, '--init_from=resume')
        reached = max(r['step'] for r in log_lines(out_dir))
        wait_for_step(out_dir, min(39, reached + rng.randint(1, 12)), p)
        time.sleep(rng.random() * 0.05)
        p.kill()
        p.wait()
    resume(picturebook_dir, out_dir)
    assert_same_run(uninterrupted, out_dir)


def test_scratch_run_next_to_a_trained_model_keeps_it(trained, run_script, train_flags, tmp_path):
    out_dir = str(tmp_path / 'out')
    shutil.copytree(trained.out_dir, out_dir)
    before = {name: open(os.path.join(out_dir, name), 'rb').read() for name in ('ckpt.pt', 'train_log.jsonl')}
    p = run_script('train.py', f'--data_dir={trained.data_dir}', f'--out_dir={out_dir}', *train_flags)
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr
    assert 'already holds a trained model' in p.stderr and '--init_from=resume' in p.stderr, p.stderr
    assert all(open(os.path.join(out_dir, name), 'rb').read() == data for name, data in before.items())


def test_a_second_run_into_the_same_out_dir_is_refused_and_a_killed_one_leaves_no_lock(picturebook_dir, tmp_path):
    out_dir = str(tmp_path)
    first = start(picturebook_dir, out_dir, '--max_iters=100000')
    assert wait_for_step(out_dir, 2, first)
    second = start(picturebook_dir, out_dir, '--max_iters=10')
    _, err = second.communicate(timeout=120)
    assert second.returncode == 1 and 'in use by another training run' in err and 'Traceback' not in err, err
    first.kill()  # kill -9: no chance to tidy up
    first.wait()
    third = start(picturebook_dir, out_dir, '--init_from=resume', '--max_iters=20')
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err


@pytest.mark.parametrize('flag', ['--batch_size=4', '--size=mini', '--learning_rate=0.1', f'--data_dir={ROOT}'])
def test_resume_refuses_a_flag_that_contradicts_the_checkpoint(trained, run_script, train_flags, tmp_path, flag):
    out_dir = str(tmp_path / 'out')
    shutil.copytree(trained.out_dir, out_dir)
    p = run_script('train.py', f'--out_dir={out_dir}', '--init_from=resume', '--max_iters=30', flag)
    assert p.returncode == 1 and 'contradicts the checkpoint' in p.stderr and 'Traceback' not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_resume_refuses_an_optimiser_grouped_otherwise(trained, run_script, tmp_path):
    """A checkpoint whose optimiser groups the parameters in another way (saved by another version of train.py)
    ends in one line, and the checkpoint is left as it was."""
    out_dir = str(tmp_path / 'out')
    shutil.copytree(trained.out_dir, out_dir)
    path = os.path.join(out_dir, 'ckpt.pt')
    ckpt = torch.load(path, weights_only=True)
    groups = ckpt['optimizer']['AdamW']['param_groups']
    groups[-1:] = [{**groups[-1], 'params': groups[-1]['params'][:1]}, {**groups[-1], 'params': groups[-1]['params'][1:]}]
    torch.save(ckpt, path)
    before = open(path, 'rb').read()
    p = run_script('train.py', f'--out_dir={out_dir}', '--init_from=resume', '--max_iters=30')
    assert p.returncode == 1 and 'grouped the parameters' in p.stderr and 'Traceback' not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and open(path, 'rb').read() == before


def test_resume_takes_the_checkpoints_settings_without_repeating_them(trained, run_script, tmp_path):
    """Only --out_dir and what changes no step (here: more steps) are needed; model, data and batch come along."""
    out_dir = str(tmp_path / 'out')
    shutil.copytree(trained.out_dir, out_dir)
    p = run_script('train.py', f'--out_dir={out_dir}', '--init_from=resume', '--max_iters=24')
    assert p.returncode == 0, p.stderr
    assert 'resuming from' in p.stdout and 'done: 24 steps' in p.stdout


def test_resume_with_a_preset_takes_the_checkpoints_settings(trained, run_script, tmp_path):
    """`--size=tiny --init_from=resume`: the preset's values are defaults, not the user's word. A run that set its
    own length and learning rate goes on to its own max_iters at its own rate, not to the preset's 2,000 steps."""
    out_dir = str(tmp_path / 'out')
    shutil.copytree(trained.out_dir, out_dir)
    path = os.path.join(out_dir, 'ckpt.pt')
    ckpt = torch.load(path, weights_only=True)
    ckpt['config'].update(max_iters=24, learning_rate=2e-3)  # as if trained with --max_iters=24 --learning_rate=2e-3
    torch.save(ckpt, path)
    p = run_script('train.py', '--size=tiny', f'--out_dir={out_dir}', '--init_from=resume')
    assert p.returncode == 0, p.stderr
    assert 'done: 24 steps' in p.stdout, p.stdout
    assert torch.load(path, weights_only=True)['config']['learning_rate'] == 2e-3


def test_a_checkpoint_from_before_merge_and_muon_resumes_with_what_it_trained_with():
    """Settings added since a checkpoint was saved take the values it trained with, not today's defaults."""
    c = SimpleNamespace(**train.DEFAULTS)
    saved = {k: v for k, v in train.DEFAULTS.items() if k not in checkpoint.BEFORE_THEY_EXISTED}
    checkpoint.resume_settings(c, saved, given=())
    assert c.merge == 1 and c.muon_lr == 0.0 and train.DEFAULTS['merge'] == 2
