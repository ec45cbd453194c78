"""pictures.py: the sample sheet, attention over the picture and loss curves are real pictures of the right numbers;
keeping attention weights changes nothing the model computes."""
import json
import os
import re
import random

import numpy as np
import pytest
import torch
from PIL import Image

import data
import picturebook
import pictures
import sample
from checkpoint import load_checkpoint, model_from_checkpoint
from cli import UserError
from model import NanoVLM, SelfAttention

SCENE = {'sky': 'sunny', 'ground': 'grass',
         'objects': [{'kind': 'ball', 'color': 'red', 'size': 'big', 'where': 'left'}]}


def read_png(path, size=None):
    """The PNG at path as an array, checked to be a real picture: of that size, not blank, in several colours."""
    with Image.open(path) as im:
        assert im.format == 'PNG'
        assert size is None or im.size == size, im.size
        pixels = np.asarray(im.convert('RGB'))
    assert pixels.std() > 0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10
    return pixels


@pytest.fixture(scope='module')
def checkpoint(trained):
    model, tokenizer = model_from_checkpoint(load_checkpoint(os.path.join(trained.out_dir, 'ckpt.pt')))
    records = data.read_jsonl(os.path.join(trained.data_dir, 'test.jsonl'))[:6]
    size = model.config.img_size
    images = np.stack([data.load_image(os.path.join(trained.data_dir, r['image']), size) for r in records])
    return model, tokenizer, records, images


@pytest.mark.parametrize('visual_tokens', ['all', 'cls'])
def test_keeping_weights_changes_nothing(tiny, visual_tokens):
    torch.manual_seed(0)
    model = NanoVLM(tiny(visual_tokens=visual_tokens)).eval()
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    idx = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        fused, _ = model(images, idx)
    encoder, decoder = pictures.attention_weights(model, images, idx)
    attentions = [m for m in model.modules() if isinstance(m, SelfAttention)]
    assert all(not a.keep_weights and a.weights is None for a in attentions), 'weights are kept after the pass'
    for a in attentions:
        a.keep_weights = True
    with torch.no_grad():
        kept, _ = model(images, idx)
    torch.testing.assert_close(kept, fused, atol=1e-5, rtol=1e-5)
    S = model.n_prefix + 9
    assert [w.shape for w in decoder] == [(2, 2, S, S)] * 2 and [w.shape for w in encoder] == [(2, 2, 17, 17)]
    for w in encoder + decoder:
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert (decoder[0].triu(1) == 0).all(), 'the decoder attends to a later position'


def test_fact_spans_read_what_picturebook_reads():
    rng = random.Random(0)
    for _ in range(300):
        scene = picturebook.random_scene(rng)
        text = picturebook.describe_scene(scene, rng.choice(picturebook.STYLES), rng)
        read = {fact for fact in picturebook.facts(text) if fact[0] in pictures.MARKED}
        assert {fact for fact, _ in pictures.fact_spans(text)} == read, text
    text = 'Two red balls lie on the grass. The sun is out.'
    spans = {text[s:e] for _, (s, e) in pictures.fact_spans(text)}
    assert spans == {'red balls', 'Two', 'grass', 'sun is out'}


def runs_of(pixels, colour, length=15):
    """Rows that hold a horizontal run of at least length pixels of exactly colour (an underline)."""
    hit = (pixels == colour).all(-1).astype(int)
    runs = np.zeros_like(hit)
    for x in range(hit.shape[1]):
        runs[:, x] = (runs[:, x - 1] + 1) * hit[:, x] if x else hit[:, x]
    return set(np.flatnonzero(runs.max(1) >= length))


def test_sample_sheet_marks_the_false_fact(tmp_path):
    image = np.asarray(picturebook.draw_scene(SCENE, 32))
    right = 'There is a red ball on the grass. It is a sunny day.'
    wrong = right.replace('red', 'blue')
    assert pictures.sample_sheet([image], [right], tmp_path / 'right.png', scenes=[SCENE]) == [(3, 3)]
    assert pictures.sample_sheet([image], [wrong], tmp_path / 'wrong.png', scenes=[SCENE]) == [(2, 3)]
    right_px, wrong_px = read_png(tmp_path / 'right.png'), read_png(tmp_path / 'wrong.png')
    # the legend underlines its red example in both; only the wrong text has a second red underline, in the cell
    assert len(runs_of(wrong_px, pictures.FALSE_RGB)) > len(runs_of(right_px, pictures.FALSE_RGB))
    underline = max(runs_of(wrong_px, pictures.FALSE_RGB))
    assert underline > 32 * 4, 'the red underline is not beneath the picture'
    assert (np.abs(right_px.astype(int) - pictures.TRUE_RGB).sum(-1) < 60).sum() > 20, 'no green words'


def test_the_grounding_line_counts_the_objects_named(tmp_path):
    """One object of four named four times is all true and still a poor description: the line says both."""
    import grade
    scene = {'sky': 'sunny', 'ground': 'grass', 'objects': [
        {'kind': 'tree', 'color': 'orange', 'size': 'big', 'where': 'left'},
        {'kind': 'dog', 'color': 'brown', 'size': 'small', 'where': 'middle'},
        {'kind': 'car', 'color': 'red', 'size': 'big', 'where': 'right'},
        {'kind': 'balloon', 'color': 'blue', 'size': 'small', 'where': 'middle'}]}
    text = 'A big orange tree, a big orange tree, an orange tree and a big orange tree.'
    _, counts = pictures.fact_marks(text, scene)
    assert counts == {'stated': 2, 'true': 2, 'objects': 4, 'named': 1}
    assert pictures.grounding_line(counts) == '2/2 facts true, 1/4 objects named'
    judged = grade.grounding([{'id': 'x', 'text': text, 'scene': scene}])  # the judge counts the same
    assert (judged['true'], judged['facts'], judged['named'], judged['objects']) == (2, 2, 1, 4)
    image = np.asarray(picturebook.draw_scene(scene, 32))
    assert pictures.sample_sheet([image], [text], tmp_path / 'sheet.png', scenes=[scene]) == [(2, 2)]


def test_sample_sheet_of_a_trained_model(checkpoint, tmp_path):
    model, tokenizer, records, images = checkpoint
    texts = sample.describe(model, tokenizer, images, temperature=0, max_new_tokens=30)
    counts = pictures.sample_sheet(images, texts, tmp_path / 'sheet.png', scenes=[r['scene'] for r in records],
                                   columns=4, title='After 20 steps.')
    cell = max(pictures.enlarge(images[0], 128).width, 240)
    pixels = read_png(tmp_path / 'sheet.png')
    assert pixels.shape[1] == 2 * pictures.MARGIN + 4 * cell + 3 * 2 * pictures.GAP and pixels.shape[0] > 2 * 128
    assert len(counts) == 6 and all(0 <= true <= stated for true, stated in counts)
    assert pictures.sample_sheet(images[:2], texts[:2], tmp_path / 'plain.png') == [None, None]  # no scenes: no marks
    read_png(tmp_path / 'plain.png')


def test_attention_per_word(checkpoint, tmp_path):
    model, tokenizer, _, images = checkpoint
    text = 'There is a big red ball on the left. The sky is blue.'
    words, maps = pictures.attention_picture(model, tokenizer, images[0], text, tmp_path / 'words.png')
    assert words == text.split() and maps.shape == (len(words), 2, 2)  # 4x4 patches, 2x2 merged
    assert (maps >= 0).all() and np.abs(maps.sum((1, 2)) - 1).max() < 1e-5
    read_png(tmp_path / 'words.png')
    words, maps = pictures.attention_picture(model, tokenizer, images[1], None, tmp_path / 'described.png', layer=-1)
    assert len(words) == len(maps) > 0 and np.abs(maps.sum((1, 2)) - 1).max() < 1e-5  # described greedily first
    read_png(tmp_path / 'described.png')
    assert not model.decoder[0].attn.keep_weights and not model.training
    with pytest.raises(UserError, match='layer 7'):
        pictures.attention_picture(model, tokenizer, images[0], text, tmp_path / 'x.png', layer=7)
    with pytest.raises(UserError, match='reads'):
        pictures.attention_picture(model, tokenizer, images[0, :16], text, tmp_path / 'x.png')


def test_attention_of_the_cls_token(checkpoint, tiny, tmp_path):
    _, tokenizer, _, images = checkpoint
    torch.manual_seed(0)
    model = NanoVLM(tiny(visual_tokens='cls', vocab_size=len(tokenizer))).eval()
    labels, maps = pictures.attention_picture(model, tokenizer, images[0], 'A red ball.', tmp_path / 'cls.png')
    assert labels == ['CLS'] and maps.shape == (1, 4, 4) and abs(maps.sum() - 1) < 1e-5
    read_png(tmp_path / 'cls.png')


def test_loss_curves(tmp_path):
    log = tmp_path / 'train_log.jsonl'
    lines = [json.dumps({'step': s, 'train': {'short': 6 * 0.97 ** s, 'long': 6 * 0.97 ** s + 0.3},
                         'lr': 1e-3, 'ms': 20.0, 'mfu': 0.01}) for s in range(0, 100, 2)]
    lines += [json.dumps({'step': s, 'eval': {'train/short': 1.0, 'train/long': 1.2, 'val/short': 5 * 0.98 ** s,
                                              'val/long': 5.5 * 0.98 ** s}}) for s in (0, 50, 99)]
    lines += ['not json', json.dumps({'note': 'anything else'}), json.dumps([1, 2]), '{"step": 100, "train": {"short": 1.']
    log.write_text('\n'.join(lines) + '\n')
    series = pictures.loss_curves(log, tmp_path / 'loss.png')
    assert {k: len(v) for k, v in series.items()} == {'train/short': 50, 'train/long': 50,
                                                      'val/short': 3, 'val/long': 3}
    pixels = read_png(tmp_path / 'loss.png', size=(720, 440))
    for name, (colour, _) in pictures.SERIES.items():
        assert (pixels == colour).all(-1).sum() > 20, f'no {name} line'
    pictures.loss_curves(log, tmp_path / 'linear.png', log_y=False)
    read_png(tmp_path / 'linear.png', size=(720, 440))


def test_loss_curves_of_a_real_log(trained, tmp_path):
    series = pictures.loss_curves(os.path.join(trained.out_dir, 'train_log.jsonl'), tmp_path / 'loss.png')
    assert series['train/short'] and series['train/long']
    read_png(tmp_path / 'loss.png', size=(720, 440))


def test_loss_curves_without_losses_is_one_error(tmp_path):
    (tmp_path / 'empty.jsonl').write_text('')
    (tmp_path / 'other.jsonl').write_text('{"step": 1, "note": "no loss"}\n')
    for name in ('empty.jsonl', 'other.jsonl'):
        with pytest.raises(UserError, match='no loss lines'):
            pictures.loss_curves(tmp_path / name, tmp_path / 'x.png')
    with pytest.raises(UserError, match='does not exist'):
        pictures.loss_curves(tmp_path / 'missing.jsonl', tmp_path / 'x.png')
    assert not os.path.exists(tmp_path / 'x.png')


def test_heatmap_lies_where_the_patch_is():
    """The map's first patch is the picture's top-left corner (patches run row by row, as PatchEmbed flattens them)."""
    image = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1
    tile = np.asarray(pictures.overlay(image, heat, 96)).astype(int)
    hot, cold = pictures.ramp(np.array([1.0, 0.0])).astype(int)
    assert np.abs(tile[5, 5] - (0.4 * 128 + 0.6 * hot)).max() <= 1
    assert np.abs(tile[90, 90] - (0.4 * 128 + 0.6 * cold)).max() <= 1 and np.abs(tile[5, 30] - tile[90, 90]).max() <= 1


def test_training_draws_a_sheet_at_each_evaluation_and_the_loss_curves(trained):
    sheets = sorted(os.listdir(os.path.join(trained.out_dir, 'samples')))
    assert sheets == ['step-000000.png', 'step-000010.png', 'step-000020.png']  # eval_interval 10, 20 steps
    for name in sheets:
        read_png(os.path.join(trained.out_dir, 'samples', name))
    read_png(os.path.join(trained.out_dir, 'loss.png'), size=(720, 440))


BLUE_TREE = '{"sky": "night", "ground": "snow", "objects": [{"kind": "tree", "color": "blue", "size": "big", "where": "left"}]}'


def test_sample_draws_a_scene_its_sheet_and_attention(trained, run_script, tmp_path):
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--scene={BLUE_TREE}', '--temperature=0',
                   f'--sheet={tmp_path / "sheet.png"}', f'--attention={tmp_path / "attention.png"}')
    assert p.returncode == 0, p.stderr
    assert re.search(r'^grounding: \d+ of the \d+ facts it states are true; it names [01] of the 1 objects', p.stdout, re.M)
    read_png(tmp_path / 'sheet.png')
    read_png(tmp_path / 'attention.png')
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', '--scene={"sky": "purple"}')
    assert p.returncode == 1 and p.stderr.startswith('error: --scene is not a picture-book scene') and 'Traceback' not in p.stderr


def test_sample_jsonl_draws_a_sheet_of_the_first_records(trained, run_script, tmp_path):
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl', '--n=5',
                   f'--out={tmp_path / "s.jsonl"}', '--max_new_tokens=20', f'--sheet={tmp_path / "sheet.png"}')
    assert p.returncode == 0, p.stderr
    read_png(tmp_path / 'sheet.png')
