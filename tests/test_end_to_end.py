"""train.py, sample.py and grade.py run as a user runs them, on a tiny picture-book dataset and model."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import checkpoint
import data
import grade
import sample
from conftest import ROOT


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_train_writes_checkpoint(trained, tiny_fields):
    ckpt = load(os.path.join(trained.out_dir, 'ckpt.pt'))
    assert {'model_args', 'model', 'optimizer', 'tokenizer', 'step'} <= set(ckpt)
    assert ckpt['step'] == 20
    for key, value in tiny_fields.items():
        assert ckpt['model_args'][key] == value
    with open(os.path.join(trained.data_dir, 'vocab.json')) as f:
        vocab = json.load(f)
    assert ckpt['tokenizer'] == vocab
    assert ckpt['model_args']['vocab_size'] == len(data.Tokenizer.from_state(vocab))
    assert ckpt['model']['wte.weight'].shape == (ckpt['model_args']['vocab_size'], tiny_fields['n_embd'])
    assert ckpt['optimizer']['Muon']['state'] and ckpt['optimizer']['AdamW']['state'], 'the optimiser state was not saved'
    assert not os.path.exists(os.path.join(trained.out_dir, 'ckpt.pt.tmp'))
    assert re.search(r'^step 0: ', trained.stdout, re.M) and re.search(r'^step 20: ', trained.stdout, re.M)
    assert re.search(r'^done: 20 steps', trained.stdout, re.M), trained.stdout


def test_train_loss_falls(trained):
    losses = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r'^step (\d+): train/short ([\d.]+)', trained.stdout, re.M)}
    assert set(losses) == {0, 10, 20}
    assert losses[20] < losses[0], trained.stdout


def test_evaluation_reports_the_image_gain_and_grounding(trained):
    """Each evaluation prints and logs how much worse validation gets with the pictures shuffled, for each style, and
    the grounding of greedy short descriptions of the validation scenes (precision, recall)."""
    assert re.search(r'^step 20: .*val/long [\d.]+, gain/short -?[\d.]+, gain/long -?[\d.]+, '
                     r'ground/precision [\d.]+, ground/recall [\d.]+$', trained.stdout, re.M), trained.stdout
    evals = [r['eval'] for r in map(json.loads, open(os.path.join(trained.out_dir, 'train_log.jsonl'))) if 'eval' in r]
    assert evals and all(set(e) == {'train/short', 'train/long', 'val/short', 'val/long', 'gain/short', 'gain/long',
                                    'ground/precision', 'ground/recall'}
                         and all(np.isfinite(v) for v in e.values()) for e in evals)


def test_a_run_stops_at_its_grounding_target(picturebook_dir, train_flags, tmp_path, monkeypatch, capsys):
    """--target_grounding: the first evaluation whose precision and recall both reach it ends the run, with a
    checkpoint there and the training time without evaluation. (The judge's scores are stood in for: a 20-step
    model grounds nothing; the scores themselves are tested above and in test_grade.py.)"""
    import train
    judge, evaluations = train.describe_validation, []

    def scores_after_step_10(model, tokenizer, split, c, scenes, ctx):  # evaluations at steps 0, 10, 20, ...
        texts, scores = judge(model, tokenizer, split, c, scenes, ctx)
        evaluations.append(scores)
        return texts, {k: 0.97 if len(evaluations) > 1 else 0.5 for k in scores}
    monkeypatch.setattr(train, 'describe_validation', scores_after_step_10)
    monkeypatch.chdir(ROOT)
    flags = [f for f in train_flags if not f.startswith('--max_iters=')]
    train.main([f'--data_dir={picturebook_dir}', f'--out_dir={tmp_path}', *flags, '--max_iters=40',
                '--target_grounding=0.95'])
    out = capsys.readouterr().out
    assert 'reached the target: grounding precision and recall >= 0.95 at step 10' in out, out
    assert re.search(r'^done: 10 steps in \d+s \([\d.]+s training, [\d.]+s evaluation\)', out, re.M), out
    assert load(os.path.join(tmp_path, 'ckpt.pt'))['step'] == 10


def test_resume_continues(trained, run_script, train_flags, tmp_path):
    out_dir = str(tmp_path / 'resumed')
    shutil.copytree(trained.out_dir, out_dir)
    before = load(os.path.join(out_dir, 'ckpt.pt'))
    flags = [f for f in train_flags if not f.startswith('--max_iters=')]
    p = run_script('train.py', f'--data_dir={trained.data_dir}', f'--out_dir={out_dir}', '--init_from=resume',
                   '--max_iters=30', *flags)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r'resum\w* .*at step 20\b', p.stdout), p.stdout
    assert not re.search(r'^step 0: ', p.stdout, re.M), 'resume started again from step 0'
    assert re.search(r'^done: 30 steps', p.stdout, re.M), p.stdout
    after = load(os.path.join(out_dir, 'ckpt.pt'))
    assert after['step'] == 30
    assert after['model_args'] == before['model_args'] and after['tokenizer'] == before['tokenizer']
    assert not torch.equal(after['model']['wte.weight'], before['model']['wte.weight']), 'no training after resume'
    # resumed, not restarted: the optimiser carries on counting its steps from the checkpoint's 20
    steps = [s['step'] for s in after['optimizer']['AdamW']['state'].values()]  # Muon keeps no count
    assert steps and all(float(s) == 30 for s in steps)


def test_encoder_learns_at_its_share_of_the_rate(picturebook_dir, run_script, train_flags, tmp_path):
    """--enc_lr_scale: the encoder's weight matrices train at that share of the scheduled rate, the rest at all of it."""
    out_dir = str(tmp_path / 'scaled')
    flags = [f for f in train_flags if not f.startswith(('--max_iters=', '--eval_interval='))]
    p = run_script('train.py', f'--data_dir={picturebook_dir}', f'--out_dir={out_dir}', '--enc_lr_scale=0.25',
                   '--max_iters=3', '--eval_interval=3', '--warmup_iters=10', '--muon_lr=0', *flags)  # AdamW alone
    assert p.returncode == 0, p.stdout + p.stderr
    groups = load(os.path.join(out_dir, 'ckpt.pt'))['optimizer']['param_groups']
    rates = sorted({(g['lr_scale'], g['lr']) for g in groups})
    assert len(rates) == 2 and rates[0][0] == 0.25 and rates[1][0] == 1.0, rates
    assert rates[0][1] == pytest.approx(0.25 * rates[1][1]) and rates[1][1] > 0, rates


def test_sample_one_image(trained, run_script):
    image = os.path.join(trained.data_dir, 'images', 'test-00000.png')
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--image={image}', '--max_new_tokens=30')
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].strip(), p.stdout


@pytest.fixture(scope='module')
def samples(trained, run_script, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('samples') / 's.jsonl')
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl',
                   f'--out={out}', '--n=5', '--prompt=The', '--max_new_tokens=40')
    assert p.returncode == 0, p.stdout + p.stderr
    return out


def test_sample_jsonl(samples, trained):
    records = data.read_jsonl(samples)
    truth = {r['id']: r for r in data.read_jsonl(os.path.join(trained.data_dir, 'test.jsonl'))[:5]}
    assert len(records) == 5
    assert [r['id'] for r in records] == list(truth)
    for r in records:
        assert {'id', 'image', 'prompt', 'text', 'style', 'scene'} <= set(r)
        assert r['style'] == 'short' and r['prompt'] == 'The'
        assert r['text'].startswith('The')
        assert r['scene'] == truth[r['id']]['scene']
        assert os.path.exists(r['image']) and os.path.samefile(r['image'], os.path.join(trained.data_dir, truth[r['id']]['image']))


def test_sample_jsonl_long_style_without_prompt(trained, run_script, tmp_path):
    out = str(tmp_path / 'long.jsonl')
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/val.jsonl',
                   f'--out={out}', '--n=3', '--style=long', '--max_new_tokens=20', '--temperature=0')
    assert p.returncode == 0, p.stdout + p.stderr
    records = data.read_jsonl(out)
    assert len(records) == 3 and all(r['style'] == 'long' and r['prompt'] == '' for r in records)


def test_sample_completes_each_test_record_from_its_own_beginning(trained, run_script, tmp_path):
    out = str(tmp_path / 'complete.jsonl')
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl', f'--out={out}',
                   '--task=complete', '--style=long', '--batch_size=3', '--max_new_tokens=10')
    assert p.returncode == 0, p.stdout + p.stderr
    test = data.read_jsonl(os.path.join(trained.data_dir, 'test.jsonl'))
    got = data.read_jsonl(out)
    assert [r['id'] for r in got] == [r['id'] for r in test]  # the file's order, though batched by prompt length
    for r, t in zip(got, test):
        assert r['prompt'] == t['prompts']['long'] and r['text'].startswith(r['prompt']) and r['reference'] == t['long']
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/val.jsonl',
                   f'--out={tmp_path / "x.jsonl"}', '--task=complete')
    assert p.returncode == 1 and 'have no short beginning in "prompts"' in p.stderr and 'Traceback' not in p.stderr


def test_grade_cli(samples, run_script, tmp_path):
    result = str(tmp_path / 'grades.json')
    p = run_script('grade.py', samples, '--judge=grounding', f'--json={result}')
    assert p.returncode == 0, p.stderr
    header, row = p.stdout.splitlines()
    assert header.split() == ['samples', 'n', 'facts', 'true', 'objects', 'named', 'precision', 'recall', 'words']
    expected = json.loads(json.dumps(grade.grounding(data.read_jsonl(samples))))
    with open(result) as f:
        assert json.load(f)[samples] == expected
    cells = row.split()
    assert cells[:6] == [samples, '5'] + [str(expected[k]) for k in ('facts', 'true', 'objects', 'named')]
    p = expected['scores']['precision']
    assert ' '.join(cells[6:9]) == f"{p['mean']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


def test_describe_in_process(trained):
    """sample.describe with the cache and without writes the same greedy text, starting with the prompt."""
    model, tokenizer = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(os.path.join(trained.out_dir, 'ckpt.pt')))
    images = np.stack([data.load_image(os.path.join(trained.data_dir, 'images', f'val-0000{i}.png'), 32) for i in range(3)])
    a = sample.describe(model, tokenizer, images, prompt='A red', temperature=0, max_new_tokens=25)
    b = sample.describe(model, tokenizer, images, prompt='A red', temperature=0, max_new_tokens=25, use_cache=False)
    assert a == b and len(a) == 3 and all(t.startswith('A red') for t in a)
