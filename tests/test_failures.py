"""
Damaged files and unusual input, each refused in one line that says what happened and what to do, never loaded as
if whole: checkpoints (checksums, NaN weights, a pickle that would run code), prepared arrays, vocab.json, JSONL
files (a byte-order mark, another encoding, a line that is not an object, repeated ids), a prompt longer than the
model reads, an HTML error page from the API, and sample.py's output (never its own input, resumed after a kill).
"""
import json
import os
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import build
import chat
import checkpoint
import data
import sample
import cli
from cli import UserError
from conftest import KEY
from servers import chat_server


# -----------------------------------------------------------------------------
# Checkpoints

@pytest.fixture
def ckpt(trained, tmp_path):
    """A copy of the trained checkpoint, to damage."""
    shutil.copy(os.path.join(trained.out_dir, 'ckpt.pt'), tmp_path / 'ckpt.pt')
    return str(tmp_path / 'ckpt.pt')


def test_a_checkpoint_with_damaged_bytes_is_said_to_be_damaged(ckpt):
    with zipfile.ZipFile(ckpt) as z:  # the bytes of the largest tensor, overwritten: the zip structure stays whole
        largest = max(z.infolist(), key=lambda i: i.file_size)
        tensor = z.read(largest)
    with open(ckpt, 'rb') as f:
        raw = bytearray(f.read())
    at = raw.find(tensor)
    raw[at + 8:at + 72] = os.urandom(64)
    with open(ckpt, 'wb') as f:
        f.write(raw)
    with pytest.raises(UserError, match=f'^{ckpt} is damaged: its record .* fails its checksum; train again'):
        checkpoint.load_checkpoint(ckpt)
    with pytest.raises(UserError, match='fails its checksum'):
        sample.main([f'--out_dir={os.path.dirname(ckpt)}', '--image=x.png', '--device=cpu'])


def test_a_cut_or_random_checkpoint_is_not_whole(ckpt):
    with open(ckpt, 'rb') as f:
        raw = f.read()
    for damaged in (raw[:len(raw) // 2], os.urandom(len(raw))):
        with open(ckpt, 'wb') as f:
            f.write(damaged)
        with pytest.raises(UserError, match=f'^{ckpt} is not a whole checkpoint .*; train again'):
            checkpoint.load_checkpoint(ckpt)


def test_a_checkpoint_with_nan_weights_is_refused(ckpt):
    state = torch.load(ckpt, weights_only=True)
    state['model']['wte.weight'][3, 1] = float('nan')
    torch.save(state, ckpt)
    with pytest.raises(UserError, match=r'not numbers \(NaN or inf, e.g. wte.weight\): the run that made it diverged'):
        checkpoint.load_checkpoint(ckpt)


class WritesAFile:
    """What a hostile checkpoint could hold: unpickled, it runs a function (here it only creates a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_runs_nothing(trained, run_script, tmp_path):
    out_dir, marker = tmp_path / 'out', tmp_path / 'it-ran'
    shutil.copytree(trained.out_dir, out_dir)
    state = torch.load(out_dir / 'ckpt.pt', weights_only=True)
    state['config']['note'] = WritesAFile(str(marker))
    torch.save(state, out_dir / 'ckpt.pt')
    before = (out_dir / 'ckpt.pt').read_bytes()
    for p in (run_script('sample.py', f'--out_dir={out_dir}', '--scene={"objects": []}', '--device=cpu'),
              run_script('train.py', f'--out_dir={out_dir}', '--init_from=resume', '--max_iters=30')):
        assert p.returncode == 1 and 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert 'holds objects other than tensors and plain values' in p.stderr, p.stderr
        assert not marker.exists()
    assert (out_dir / 'ckpt.pt').read_bytes() == before


# -----------------------------------------------------------------------------
# Prepared arrays and the vocabulary

def test_damaged_or_stale_prepared_arrays_say_to_prepare_again(picturebook_dir, tmp_path):
    path = str(tmp_path / 'pb')
    shutil.copytree(picturebook_dir, path, ignore=shutil.ignore_patterns('*.npy', 'vocab.json'))
    data.prepare(path, 32)
    images, tokens = data.prepared_paths(path, 'train', 32)
    again = f'delete {images} and {tokens}, and run again to prepare them again'
    good = {p: open(p, 'rb').read() for p in (images, tokens, os.path.join(path, 'train.jsonl'))}
    bad_tokens = np.load(tokens)
    bad_tokens[0, 0, 1] = 60000
    damages = [  # (file, its damaged bytes, what is said)
        (tokens, os.urandom(len(good[tokens])), 'damaged'),
        (images, good[images][:len(good[images]) // 2], 'damaged'),
        (os.path.join(path, 'train.jsonl'), good[os.path.join(path, 'train.jsonl')].split(b'\n', 1)[1],
         'damaged or out of date (64 records where train.jsonl has 63)'),
        (tokens, None, 'damaged or out of date (token ids beyond the vocabulary)'),
    ]
    for file, damaged, said in damages:
        if damaged is None:
            np.save(file, bad_tokens)
        else:
            with open(file, 'wb') as f:
                f.write(damaged)
        with pytest.raises(UserError) as e:
            data.prepare(path, 32)
        assert str(e.value).startswith(f'the prepared train arrays in {path} are {said}') and str(e.value).endswith(again)
        assert '\n' not in str(e.value)
        with open(file, 'wb') as f:
            f.write(good[file])
    os.remove(images)  # doing what it says works
    os.remove(tokens)
    data.prepare(path, 32)
    assert np.array_equal(data.Split(path, 'train', 32).tokens, np.load(tokens))


def test_a_damaged_vocabulary_is_said(picturebook_dir, tmp_path):
    path = str(tmp_path / 'pb')
    shutil.copytree(picturebook_dir, path, ignore=shutil.ignore_patterns('*.npy'))
    with open(os.path.join(path, 'vocab.json'), 'w') as f:
        f.write('{"specials": [')
    with pytest.raises(UserError, match='vocab.json is damaged .*; delete it and the .npy files beside it'):
        data.prepare(path, 32)


# -----------------------------------------------------------------------------
# JSONL input

def test_jsonl_encodings_and_lines_that_are_not_records(tmp_path):
    path = tmp_path / 'x.jsonl'
    path.write_bytes('\ufeff{"id": "a", "short": "caf\u00e9"}\n{"id": "b"}\n'.encode('utf-8'))  # as Notepad saves it
    assert data.read_jsonl(str(path)) == [{'id': 'a', 'short': 'caf\u00e9'}, {'id': 'b'}]
    path.write_bytes('{"id": "a"}\n{"id": "b", "short": "caf\u00e9"}\n'.encode('latin-1'))
    with pytest.raises(UserError, match=r'x.jsonl:2 is not UTF-8 text; save the file as UTF-8$'):
        data.read_jsonl(str(path))
    path.write_text('{"id": "a"}\n\n["b", "c"]\n')
    with pytest.raises(UserError, match=r'x.jsonl:3 is not a JSON object'):
        data.read_jsonl(str(path))


def test_repeated_ids_are_refused_naming_both_lines(tmp_path, trained):
    path = tmp_path / 'mine.jsonl'
    image = os.path.join(trained.data_dir, 'images', 'test-00000.png')
    path.write_text(''.join(json.dumps({'id': i, 'image': image, 'short': 'A dog.'}) + '\n' for i in ('a', 'b', 'a')))
    said = r"mine.jsonl:3 has the same id as line 1 \('a'\); give every record its own id"
    assert len(data.read_jsonl(str(path))) == 3  # a dataset's own files may repeat nothing, but are not checked twice
    with pytest.raises(UserError, match=said):
        build.main(['--dataset=jsonl', f'--path={path}', '--n_test=0', f'--out={tmp_path / "built"}'])
    with pytest.raises(UserError, match=said):
        sample.main([f'--out_dir={trained.out_dir}', f'--jsonl={path}', f'--out={tmp_path / "s.jsonl"}', '--device=cpu'])


# -----------------------------------------------------------------------------
# sample.py: prompts, and its output

def test_a_prompt_longer_than_the_model_reads_is_refused(trained):
    image = os.path.join(trained.data_dir, 'images', 'test-00000.png')
    with pytest.raises(UserError, match=r'^the prompt is 300 tokens long; this model reads at most \d+ tokens'):
        sample.main([f'--out_dir={trained.out_dir}', f'--image={image}', '--prompt=' + ' dog' * 300, '--device=cpu'])


def test_sample_never_writes_over_its_input_or_another_file(trained, tmp_path):
    test = os.path.join(trained.data_dir, 'test.jsonl')
    os.symlink(test, tmp_path / 'same.jsonl')
    before = open(test).read()
    for out in (test, os.path.join(trained.data_dir, '.', 'test.jsonl'), str(tmp_path / 'same.jsonl')):
        with pytest.raises(UserError, match='is the input file --jsonl; write the descriptions to another file'):
            sample.main([f'--out_dir={trained.out_dir}', f'--jsonl={test}', f'--out={out}'])
    with pytest.raises(UserError, match='train.jsonl holds records that are not descriptions by sample.py'):
        sample.main([f'--out_dir={trained.out_dir}', f'--jsonl={test}', f'--out={trained.data_dir}/train.jsonl'])
    assert open(test).read() == before


def test_sample_goes_on_after_a_kill(trained, tmp_path, capsys):
    out = str(tmp_path / 's.jsonl')
    argv = [f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl', f'--out={out}',
            '--max_new_tokens=8', '--device=cpu']
    sample.main(argv + ['--n=5'])
    first = data.read_jsonl(out)
    with open(out, 'a') as f:
        f.write('{"id": "test-00005", "te')  # the line a kill cut short
    capsys.readouterr()
    sample.main(argv)
    assert '5 of 16 records are already described' in capsys.readouterr().out
    done = data.read_jsonl(out)
    assert [r['id'] for r in done] == [f'test-{i:05d}' for i in range(16)] and done[:5] == first


def test_sample_never_mixes_two_models_or_two_settings_in_one_file(trained, tmp_path):
    """The same --out from another checkpoint, or with another temperature, stops in one line naming the clash,
    the file untouched; the same checkpoint and settings go on."""
    out = str(tmp_path / 's.jsonl')
    argv = [f'--jsonl={trained.data_dir}/test.jsonl', f'--out={out}', '--max_new_tokens=4', '--device=cpu']
    sample.main([f'--out_dir={trained.out_dir}', *argv, '--n=2'])
    with open(out, 'a') as f:
        f.write('{"id": "test-00002", "te')  # a line a killed run cut short: a refused run leaves it too
    before = open(out, 'rb').read()
    other = tmp_path / 'other'
    other.mkdir()
    ckpt = torch.load(os.path.join(trained.out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
    torch.save({**ckpt, 'step': ckpt['step'] + 1}, other / 'ckpt.pt')  # another checkpoint: other bytes
    first = cli.file_hash(os.path.join(trained.out_dir, 'ckpt.pt'))[:12]
    with pytest.raises(UserError, match=rf'^{re.escape(out)} holds descriptions by checkpoint {first}, not by this one '
                                        rf'\(\w{{12}}, the SHA-256 of ckpt.pt\)'):
        sample.main([f'--out_dir={other}', *argv])
    with pytest.raises(UserError, match=r'made with other settings \(--temperature=0.7 there, 1.0 now\)'):
        sample.main([f'--out_dir={trained.out_dir}', *argv, '--temperature=1.0'])
    assert open(out, 'rb').read() == before
    sample.main([f'--out_dir={trained.out_dir}', *argv, '--n=3'])
    assert [r['id'] for r in data.read_jsonl(out)] == ['test-00000', 'test-00001', 'test-00002']


# -----------------------------------------------------------------------------
# The API's error pages

def test_an_html_error_page_is_summarised_in_one_line(tmp_path, monkeypatch):
    server = chat_server(key=KEY, script=['good', 'html502'])
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    photos = tmp_path / 'photos'
    photos.mkdir()
    for i in range(3):
        Image.new('RGB', (8, 8), (i, 0, 0)).save(photos / f'p{i}.png')
    try:
        with pytest.raises(UserError) as e:
            build.main(['--dataset=folder', f'--images={photos}', '--n_test=0', f'--out={tmp_path / "out"}',
                        f'--base_url={server.url}/v1', '--yes=true', '--workers=1', '--max_retries=0'])
    finally:
        server.close()
    assert str(e.value).startswith('HTTP 502: 502 Bad Gateway, 1 times in a row')
    assert '<' not in str(e.value) and '\n' not in str(e.value)
    assert chat.page_summary('<!DOCTYPE html><html><body><h1>Oops</h1></body></html>') == 'an HTML error page'
    assert chat.page_summary('upstream connect error\nor disconnect/reset before headers') == \
        'upstream connect error or disconnect/reset before headers'
    assert chat.page_summary('x' * 300) == 'x' * 100 + '...'
