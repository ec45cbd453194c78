"""
Shared set-up for the test suite: offline tokenizer files, a tiny picture-book dataset and one tiny trained
checkpoint (both made once per session), and a helper to run the scripts as a user would.
"""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Offline: tiktoken reads GPT-2's BPE from ../shared/tiktoken where that folder exists. This must happen before
# anything imports tiktoken, so it is done here, at import time of the conftest.
_BPE_DIR = os.path.abspath(os.path.join(ROOT, '..', 'shared', 'tiktoken'))
if os.path.isdir(_BPE_DIR):
    os.environ['TIKTOKEN_CACHE_DIR'] = _BPE_DIR
# The models here are tiny: one thread is the fastest, and it keeps the suite quick on a 2-core machine that is
# busy with something else (several OpenMP threads fighting for busy cores slow tiny ops down a hundredfold).
os.environ.setdefault('OMP_NUM_THREADS', '1')

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

KEY = 'sk-test-0123456789'  # the API key the local Chat Completions servers of tests/servers.py want

# The tiny model used everywhere (as train.py flags and as VLMConfig fields).
TINY = dict(img_size=32, patch_size=8, enc_layer=1, enc_embd=32, enc_head=2, n_layer=2, n_head=2, n_embd=32)
TRAIN_FLAGS = [f'--{k}={v}' for k, v in TINY.items()] + [
    '--max_iters=20', '--eval_interval=10', '--eval_iters=2', '--log_interval=5', '--batch_size=8', '--n_samples=1',
    '--eval_scenes=8']


def _run(script, *args, timeout=300):
    """Run python SCRIPT ARGS in the repository root, as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='session')
def run_script():
    return _run


@pytest.fixture
def run_main(monkeypatch, capsys):
    """Like run_script, in this process: SCRIPT runs as __main__ (the code `python SCRIPT` runs) with ARGS as its
    argv, in the repository root; its exit status and output come back as a CompletedProcess. For the many tests
    of --help and of a one-line error, where a fresh Python with torch would cost a second or two each."""
    import runpy

    def run(script, *args):
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr(sys, 'argv', [script, *map(str, args)])
        code = 0
        try:
            runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return subprocess.CompletedProcess([script, *args], code, out.out, out.err)
    return run


@pytest.fixture(scope='session')
def tiny():
    """A tiny VLMConfig: tiny(visual_tokens='all', vocab_size=50, ...)."""
    from model import VLMConfig

    def make(**overrides):
        return VLMConfig(**{**TINY, 'vocab_size': 64, 'block_size': 128, 'dropout': 0.0, **overrides})
    return make


@pytest.fixture(scope='session')
def picturebook_dir(tmp_path_factory):
    """A tiny picture-book dataset at 32 px (64/16/16 records), drawn once per session."""
    import data
    path = str(tmp_path_factory.mktemp('picturebook'))
    data.make_picturebook(path, n_train=64, n_val=16, n_test=16, img_size=32)
    return path


@pytest.fixture(scope='session')
def trained(picturebook_dir, tmp_path_factory):
    """One tiny model trained for 20 steps by train.py on the picture-book dataset, shared by the end-to-end tests."""
    out_dir = str(tmp_path_factory.mktemp('out'))
    p = _run('train.py', f'--data_dir={picturebook_dir}', f'--out_dir={out_dir}', *TRAIN_FLAGS)
    assert p.returncode == 0, p.stdout + p.stderr
    return SimpleNamespace(out_dir=out_dir, data_dir=picturebook_dir, stdout=p.stdout, stderr=p.stderr)


@pytest.fixture(scope='session')
def train_flags():
    return list(TRAIN_FLAGS)


@pytest.fixture(scope='session')
def tiny_fields():
    """The tiny model's VLMConfig fields, as given to train.py."""
    return dict(TINY)


@pytest.fixture
def api(monkeypatch):
    """A local Chat Completions server (tests/servers.py) that wants KEY, the key set for the scripts, and retries
    without the real exponential wait (Retry-After still rules)."""
    import chat
    from servers import chat_server
    server = chat_server(key=KEY)
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    monkeypatch.setattr(chat, 'BACKOFF', 0.01)
    yield server
    server.close()
