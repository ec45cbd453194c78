"""
A full disk, for real: a small tmpfs mounted for each test (skipped where mounting is not allowed) and filled up.
Saving a checkpoint, preparing arrays, sampling, building and grading each stop with one line that says the disk is
full and where, leave no partial file, keep everything finished, and go on where they stopped once there is room.
"""
import json
import os
import subprocess

import pytest
from PIL import Image

import build
import checkpoint
import data
import grade
from cli import UserError
from model import NanoVLM
from optim import configure_optimizer
from servers import coco_server

FULL = 'the disk is full writing {} (kept: {}); free some space and run again'


@pytest.fixture
def disk(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk, unmounted afterwards."""
    path = tmp_path / 'disk'
    path.mkdir()
    p = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(path)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f'cannot mount a tmpfs here: {p.stderr.strip()}')
    yield str(path)
    subprocess.run(['umount', '-l', str(path)], check=True)


def fill(disk, leave):
    """Fill the disk until about `leave` bytes are free. Returns the filler, to remove for room."""
    stat = os.statvfs(disk)
    filler = os.path.join(disk, 'filler')
    with open(filler, 'wb') as f:
        f.write(b'\0' * (stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_checkpoint_save_keeps_the_last_good_one(disk, tiny):
    model = NanoVLM(tiny())
    optimizer = configure_optimizer(model, 0.1, 1e-3, (0.9, 0.99), 'cpu')
    tokenizer, path = data.Tokenizer([]), os.path.join(disk, 'ckpt.pt')
    checkpoint.save_checkpoint(path, model, optimizer, tokenizer, 300, {})
    fill(disk, 8192)
    with pytest.raises(UserError) as e:
        checkpoint.save_checkpoint(path, model, optimizer, tokenizer, 400, {})
    assert str(e.value) == FULL.format(path, 'the last good checkpoint, step 300')
    assert sorted(os.listdir(disk)) == ['ckpt.pt', 'filler']  # no ckpt.pt.tmp
    assert checkpoint.load_checkpoint(path)['step'] == 300


def test_prepare_leaves_no_half_array_and_goes_on_once_there_is_room(disk):
    data.make_picturebook(disk, n_train=32, n_val=8, n_test=8, img_size=32)
    filler = fill(disk, 64 * 1024)  # the train pictures take 96 kB
    with pytest.raises(UserError) as e:
        data.prepare(disk, 32)
    assert str(e.value).startswith(f'the disk is full writing the prepared train arrays in {disk} (kept: the dataset')
    assert not [f for f in os.listdir(disk) if f.endswith('.npy')]
    os.remove(filler)
    data.prepare(disk, 32)
    assert len(data.Split(disk, 'train', 32).images) == 32


def test_write_jsonl_keeps_the_file_as_it_was(disk):
    path = os.path.join(disk, 'records.jsonl')
    data.write_jsonl(path, [{'id': 1}])
    fill(disk, 0)
    with pytest.raises(UserError, match='^the disk is full writing .*records.jsonl .kept: .*records.jsonl as it was'):
        data.write_jsonl(path, [{'id': i, 'text': 'x' * 1000} for i in range(100)])
    assert data.read_jsonl(path) == [{'id': 1}] and sorted(os.listdir(disk)) == ['filler', 'records.jsonl']


def test_sampling_stops_in_one_line_and_a_rerun_goes_on(disk, trained, run_script):
    out = os.path.join(disk, 'samples.jsonl')
    args = ['sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl', f'--out={out}',
            '--batch_size=2', '--max_new_tokens=20', '--device=cpu']
    filler = fill(disk, 8192)  # a page for sample.py's lock file, a page for the samples: some batches fit, not all 16
    p = run_script(*args)
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'Traceback' not in p.stderr, p.stderr
    kept = data.read_jsonl(out)  # whole lines only
    assert 0 < len(kept) < 16
    assert p.stderr == 'error: ' + FULL.format(out, f'the {len(kept)} descriptions written before; a rerun describes '
                                                     'only the rest') + '\n'
    assert sorted(os.listdir(disk)) == ['filler', 'samples.jsonl']
    os.remove(filler)
    p = run_script(*args)
    assert p.returncode == 0 and f'{len(kept)} of 16 records are already described' in p.stdout, p.stdout + p.stderr
    done = data.read_jsonl(out)
    test = data.read_jsonl(os.path.join(trained.data_dir, 'test.jsonl'))
    assert [r['id'] for r in done] == [r['id'] for r in test]
    assert all(r in done for r in kept)  # what was made before is kept as it was, not made again
    assert sorted(os.listdir(disk)) == ['samples.jsonl']


def test_building_stops_in_one_line_and_a_rerun_pays_only_for_what_was_lost(disk, tmp_path, api):
    photos = tmp_path / 'photos'
    photos.mkdir()
    for i in range(12):
        Image.new('RGB', (20, 20), (20 * i, 90, 160)).save(photos / f'p{i:02d}.png')
    out = os.path.join(disk, 'mine')
    argv = ['--dataset=folder', f'--images={photos}', '--n_test=2', f'--out={out}', f'--base_url={api.url}/v1',
            '--yes=true', '--workers=1']
    filler = fill(disk, 8192)  # a page for build.lock, a page of build.jsonl: about six of the twelve records
    with pytest.raises(UserError) as e:
        build.main(argv)
    log = data.read_log(os.path.join(out, 'build.jsonl'))
    assert 0 < len(log) < 12 and len(api.log) == len(log) + 1
    assert str(e.value) == FULL.format(os.path.join(out, 'build.jsonl'), f'the {len(log)} results before it; this one '
                                       'was paid for but could not be written')
    assert os.listdir(out) == ['build.jsonl']  # build.lock is gone with the build
    os.remove(filler)
    build.main(argv)
    assert len(api.log) == 12 + 1  # only the one that was paid for but lost is asked again
    assert sum(len(data.read_jsonl(os.path.join(out, f'{s}.jsonl'))) for s in ('train', 'val', 'test')) == 12


def test_grading_stops_in_one_line_and_a_rerun_pays_only_for_what_was_lost(disk, tmp_path, api):
    api.default = ('content', json.dumps({'assessment': 'Fine.', 'grammar': 7, 'consistency': 7, 'creativity': 7,
                                          'meaningfulness': 7, 'plot': 7}))
    samples = str(tmp_path / 's.jsonl')
    data.write_jsonl(samples, [{'id': i, 'image': 'x.png', 'prompt': 'The red', 'text': f'The red ball number {i}.'}
                               for i in range(60)])
    cache = os.path.join(disk, 'cache.jsonl')
    argv = [samples, '--judge=gpt', f'--base_url={api.url}/v1', f'--cache={cache}', '--yes=true', '--workers=1']
    filler = fill(disk, 8192)  # a page for the cache's lock file, a page of grades: about twenty of the sixty
    with pytest.raises(UserError) as e:
        grade.main(argv)
    graded = data.read_log(cache)
    assert 0 < len(graded) < 60 and len(api.log) == len(graded) + 1
    assert str(e.value) == FULL.format(cache, f'the {len(graded)} results before it; this one was paid for but could '
                                       'not be written')
    os.remove(filler)
    grade.main(argv)
    assert len(api.log) == 60 + 1 and len(data.read_log(cache)) == 60


def test_a_download_stops_in_one_line_without_retrying(disk, api):
    coco = coco_server()
    out = os.path.join(disk, 'coco')
    argv = ['--dataset=coco', '--n=4', '--n_test=1', f'--out={out}', f'--coco_url={coco.url}',
            f'--base_url={api.url}/v1', '--yes=true']
    filler = fill(disk, 64 * 1024)  # the caption annotations take over 300 kB
    try:
        with pytest.raises(UserError) as e:
            build.main(argv)
        zip_path = os.path.join(out, 'annotations_trainval2017.zip')
        assert str(e.value) == FULL.format(zip_path, 'every file downloaded before; a rerun downloads the rest')
        assert os.listdir(out) == [] and len(coco.log) == 1  # no .part left, and no retry
        os.remove(filler)
        build.main(argv)
    finally:
        coco.close()
    assert sum(len(data.read_jsonl(os.path.join(out, f'{s}.jsonl'))) for s in ('train', 'val', 'test')) == 5


def test_a_json_report_that_does_not_fit_leaves_the_last_one(disk, tmp_path, picturebook_dir):
    samples = str(tmp_path / 's.jsonl')
    test = data.read_jsonl(os.path.join(picturebook_dir, 'test.jsonl'))[:3]
    data.write_jsonl(samples, [{'id': r['id'], 'text': r['short'], 'scene': r['scene']} for r in test])
    target = os.path.join(disk, 'results.json')
    with open(target, 'w') as f:
        f.write('{"earlier": "results"}')
    fill(disk, 0)
    with pytest.raises(UserError, match=f'^the disk is full writing {target} .kept: the table above'):
        grade.main([samples, '--judge=grounding', f'--json={target}'])
    with open(target) as f:
        assert f.read() == '{"earlier": "results"}'  # not deleted, not cut
    assert sorted(os.listdir(disk)) == ['filler', 'results.json']
