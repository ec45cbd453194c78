"""
Describe pictures with a trained NanoVLM, or complete a description you begin.

    python sample.py --out_dir=out-tiny --image=data/picturebook/images/test-00000.png
    python sample.py --out_dir=out-tiny --image=photo.jpg --prompt="The red" --style=long
    python sample.py --out_dir=out-tiny --jsonl=data/picturebook/test.jsonl --out=samples.jsonl --sheet=sheet.png
    python sample.py --out_dir=out-tiny --image=data/picturebook/images/test-00000.png --attention=attention.png
    python sample.py --out_dir=out-tiny --scene='{"sky": "night", "ground": "snow", "objects": [{"kind": "tree", "color": "blue", "size": "big", "where": "left"}]}'

How the style is chosen: one model learns both styles. Every training text starts with a style token, <|short|> or
<|long|>, and the model learns to write a ShortDesc after the first and a LongDesc after the second (the paper
trained a separate model per dataset; one model with a style token is cheaper and shares what it sees). --style
picks the token; a --prompt is the beginning of the description, which the model continues.

Pictures of what the model sees (pictures.py): --sheet=PNG draws the pictures with their descriptions beneath,
every false fact marked where the truth is known (picture-book); --attention=PNG draws, for one picture, where the
decoder looked while writing each word (or, for a model that sees through the CLS token alone, where CLS looked).
--scene=JSON draws a picture-book scene you write (the "scene" of a record) and describes it, saying how many of the
facts it states are true: try an object in a colour the model never saw it in.

With --jsonl every record of a dataset file is described (images resolved relative to that file) and written to
--out as {"id", "image", "style", "prompt", "text", "reference", "dataset"}: text is the whole description, the
prompt included, reference the record's own description in that style, and dataset the folder of the JSONL (where
grade.py finds the training text). The record's "scene", if it has one, is copied so that grade.py can check the
text against the picture. Each batch is appended to --out as it is done, so an interrupted run keeps what it made
and the same command again describes only the rest (delete --out to describe everything again); a picture that
cannot be read is said and skipped. Each record also names the checkpoint that wrote it ("model": the SHA-256 of
ckpt.pt) and how ("sampling": task, style, temperature, top_k, max_new_tokens, seed), and a rerun goes on only with
the same of both: another checkpoint or other settings into the same --out stop in one line, the file untouched, so
one file never holds two models' descriptions for grade.py to score as one. --task=complete is the paper's test:
each record of a test.jsonl is completed from its own beginning (its "prompts", 6-7 words short, 18-20 long):

    python sample.py --out_dir=out-tiny --jsonl=data/picturebook/test.jsonl --task=complete --style=long --out=long.jsonl
"""
import os
from itertools import groupby

import numpy as np
import torch

import data
import grade
import pictures
import picturebook
from checkpoint import load_checkpoint, model_from_checkpoint
from cli import UserError, file_hash, hold, let_go, loads, parse_flags, pick_device, run_cli
from data import EOT, STYLE_TOKEN

DEFAULTS = dict(
    out_dir='out-tiny',     # folder of the checkpoint (ckpt.pt)
    image='',               # describe this one image ...
    scene='',               # ... or a picture-book scene drawn from this JSON ...
    jsonl='',               # ... or every record of this JSONL dataset file
    out='',                 # with --jsonl: write the descriptions here (JSONL)
    n=0,                    # with --jsonl: only the first n records (0: all)
    prompt='',              # the beginning of the description, to be completed
    task='describe',        # with --jsonl: 'describe' from --prompt, or 'complete' each record's own beginning
    style='short',          # 'short' (20-25 words) or 'long' (60-70 words)
    temperature=0.7,        # 0 is greedy; higher is more varied and less exact
    top_k=20,               # sample from the k most likely tokens (0: all)
    max_new_tokens=120,     # upper bound on the tokens written
    batch_size=64,          # images described at once
    seed=1337,              # for sampling
    device='auto',          # auto, cpu, cuda, mps
    sheet='',               # also draw a sample sheet (PNG) of the pictures described (with --jsonl: the first 16)
    attention='',           # with --image or --scene: also draw where the model looked, word by word (PNG)
)


# -----------------------------------------------------------------------------
# A model's tokens back into words: the one way, which train.py's log and serve.py's page use too

def start_tokens(tokenizer, style, prompt, block_size):
    """What the model continues: [style token] + the prompt's tokens ([<|endoftext|>] + ... for style None). A
    UserError if it leaves the model no room to write (block_size tokens is the longest text it reads)."""
    if style is not None and style not in STYLE_TOKEN:
        raise UserError(f'--style={style}: use short or long')
    start = [STYLE_TOKEN[style] if style else EOT] + tokenizer.encode(prompt.rstrip())
    if len(start) >= block_size:
        raise UserError(f'the prompt is {len(start) - 1} tokens long; this model reads at most {block_size} tokens, so '
                        f'give it a beginning of fewer than {block_size - 1} ({prompt[:40]!r}...)')
    return start


@torch.no_grad()
def describe(model, tokenizer, images, style='short', prompt='', temperature=0.7, top_k=20, max_new_tokens=120,
             use_cache=True, on_token=None):
    """Descriptions of images (B, S, S, 3) uint8 (numpy or torch), each starting with its prompt: one string for
    all, or a list of B prompts of the same length in tokens. The model continues [style token] + prompt, the way
    every training text begins (style None: <|endoftext|>, for a model trained with --style_token=false).
    on_token: called with each step's new tokens, as model.generate says. Returns B strings."""
    device = next(model.parameters()).device
    images = torch.as_tensor(np.array(images)).to(device)  # a copy: memory-mapped arrays are read-only
    prompts = [prompt] * len(images) if isinstance(prompt, str) else prompt
    starts = [start_tokens(tokenizer, style, p, model.config.block_size) for p in prompts]
    idx = torch.tensor(starts, dtype=torch.long, device=device)  # (B, T): fails unless all have the same length
    new = model.generate(images, idx, max_new_tokens, temperature=temperature, top_k=top_k, eot=EOT,
                         use_cache=use_cache, on_token=on_token)
    return [tokenizer.decode(start[1:] + row) for start, row in zip(starts, new.tolist())]


def main(argv):
    f = parse_flags(DEFAULTS, argv, minimum={'batch_size': 1, 'max_new_tokens': 1, 'n': 0, 'top_k': 0, 'temperature': 0},
                    doc=__doc__, sources=['sample'])
    if sum(map(bool, (f['image'], f['scene'], f['jsonl']))) != 1:
        raise UserError('give one of --image=PATH, --scene=JSON or --jsonl=FILE')
    if f['attention'] and f['jsonl']:
        raise UserError('--attention draws one picture: use it with --image or --scene')
    if f['jsonl'] and not f['out']:
        raise UserError('--jsonl needs --out=FILE for the descriptions')
    if f['task'] not in ('describe', 'complete') or f['task'] == 'complete' and not f['jsonl']:
        raise UserError(f"--task={f['task']}: use describe, or complete with --jsonl")
    if f['jsonl'] and os.path.realpath(f['out']) == os.path.realpath(f['jsonl']):
        raise UserError(f"--out={f['out']} is the input file --jsonl; write the descriptions to another file")
    if f['jsonl'] and not os.path.isdir(os.path.dirname(os.path.abspath(f['out']))):
        raise UserError(f"--out={f['out']}: its folder does not exist")
    device = pick_device(f['device'])
    ckpt = load_checkpoint(os.path.join(f['out_dir'], 'ckpt.pt'), device)
    model, tokenizer = model_from_checkpoint(ckpt)
    model.to(device)
    torch.manual_seed(f['seed'])
    style = f['style'] if ckpt['config'].get('style_token', True) else None  # trained without: no style to pick
    opts = dict(style=style, temperature=f['temperature'], top_k=f['top_k'], max_new_tokens=f['max_new_tokens'])
    if f['jsonl']:
        lock = hold(f['out'] + '.lock', f['out'], 'another sample.py', 'give it another --out')
        try:
            describe_file(model, tokenizer, f, opts, file_hash(os.path.join(f['out_dir'], 'ckpt.pt')))
        finally:
            let_go(lock)
        if f['sheet']:
            made = made_before(f['out'])[:16]
            pictures.sample_sheet([data.load_image(m['image'], model.config.img_size) for m in made],
                                  [m['text'] for m in made], f['sheet'], scenes=[m.get('scene') for m in made])
        return
    scene = read_scene(f['scene']) if f['scene'] else None
    image = np.asarray(picturebook.draw_scene(scene, model.config.img_size)) if scene else \
        data.load_image(f['image'], model.config.img_size)  # (S, S, 3) uint8
    text = describe(model, tokenizer, image[None], prompt=f['prompt'], **opts)[0]
    print(text)
    if scene:
        g = grade.grounding([{'id': 'scene', 'text': text, 'scene': scene}])
        print(f"grounding: {g['true']} of the {g['facts']} facts it states are true; it names {g['named']} of the "
              f"{g['objects']} objects in the picture")
    if f['sheet']:
        pictures.sample_sheet([image], [text], f['sheet'], scenes=[scene] if scene else None)
    if f['attention']:
        pictures.attention_picture(model, tokenizer, image, text, f['attention'], style=style)


def describe_file(model, tokenizer, f, opts, model_id):
    """Describe the records of f['jsonl'] that f['out'] does not hold yet, appending each batch to it as it is done;
    a picture that cannot be read is said and skipped. Then f['out'] is put in the input's order. model_id: the
    checkpoint's SHA-256; f['out'] made by another checkpoint or with other sampling settings is refused as it is."""
    records = data.read_jsonl(f['jsonl'], unique_ids=True)[:f['n'] or None]
    missing = [r.get('id') for r in records if not r.get('image')]
    if missing:
        raise UserError(f"{len(missing)} records of {f['jsonl']} (e.g. {missing[0]}) have no \"image\"")
    if f['task'] == 'complete':
        missing = [r.get('id') for r in records if f['style'] not in r.get('prompts', {})]
        if missing:
            raise UserError(f"{len(missing)} records of {f['jsonl']} (e.g. {missing[0]}) have no {f['style']} beginning "
                            "in \"prompts\": use a test.jsonl made by this version of data.py or build.py")
    root = os.path.dirname(f['jsonl'])
    paths = [os.path.join(root, r['image']) for r in records]
    prompts = [r['prompts'][f['style']] if f['task'] == 'complete' else f['prompt'] for r in records]
    keys = [key({'id': r.get('id', path), 'style': f['style'], 'prompt': prompt})
            for r, path, prompt in zip(records, paths, prompts)]
    sampling = {k: f[k] for k in SAMPLING}
    made = made_before(f['out'], model_id, sampling)
    done = {key(m) for m in made}  # an earlier run's descriptions are not made again
    todo = [i for i, k in enumerate(keys) if k not in done]
    if len(todo) < len(records):
        print(f"{len(records) - len(todo):,} of {len(records):,} records are already described in {f['out']} "
              '(delete it to describe them again)')
    lengths = [len(start_tokens(tokenizer, f['style'], p, model.config.block_size)) for p in prompts]
    batches = []  # prompts of equal length in tokens are described together: a batch is one tensor
    for _, same in groupby(sorted(todo, key=lengths.__getitem__), key=lengths.__getitem__):
        same = list(same)
        batches += [same[k:k + f['batch_size']] for k in range(0, len(same), f['batch_size'])]
    written, skipped = 0, 0
    for batch in batches:
        pictures = {}
        for i in batch:
            try:
                pictures[i] = data.load_image(paths[i], model.config.img_size)
            except UserError as e:
                print(f'skipped: {e}')
                skipped += 1
        if not pictures:
            continue
        texts = describe(model, tokenizer, np.stack(list(pictures.values())), prompt=[prompts[i] for i in pictures], **opts)
        rows = []
        for i, text in zip(pictures, texts):
            r = records[i]
            rows.append({'id': r.get('id', paths[i]), 'image': paths[i], 'style': f['style'], 'prompt': prompts[i],
                         'text': text, 'reference': r.get(f['style'], ''), 'dataset': root, 'model': model_id,
                         'sampling': sampling,
                         **({'scene': r['scene']} if 'scene' in r else {})})
        data.append_jsonl(f['out'], rows, f'the {written:,} descriptions written before; a rerun describes only the rest')
        written += len(pictures)
        print(f'described {written}/{len(todo)}', end='\r', flush=True)
    made, order = made_before(f['out']), {k: n for n, k in enumerate(keys)}
    ordered = sorted(made, key=lambda m: order.get(key(m), len(keys)))
    if ordered != made:  # batches go by prompt length; the file reads in the input's order
        data.write_jsonl(f['out'], ordered, f"every description, in {f['out']} in the order they were made")
    print(f"\nwrote {written:,} descriptions to {f['out']}" +
          (f'; {skipped:,} pictures could not be read and were skipped (said above)' if skipped else ''))


def read_scene(text):
    """A picture-book scene from its JSON (as a record's "scene"), checked so that drawing it cannot fail."""
    try:
        scene = checked_scene(loads(text))
    except ValueError:
        scene = None
    if scene is None:
        raise UserError('--scene is not a picture-book scene: give JSON like {"sky": "night", "ground": "snow", '
                        '"objects": [{"kind": "cat", "color": "red", "size": "big", "where": "left"}]} with words '
                        'picturebook.py knows')
    return scene


def checked_scene(scene, most=None):
    """scene (parsed JSON) rebuilt from the picture-book vocabulary's own words, so that drawing it cannot fail and
    nothing else passes; None if it is not one (a sky, a ground, one object or more, at most `most` where given).
    serve.py checks the scenes a page sends with it too."""
    try:
        objects = scene['objects']
        ok = (scene['sky'] in picturebook.SKIES and scene['ground'] in picturebook.GROUNDS and isinstance(objects, list)
              and 1 <= len(objects) <= (most or len(objects)) and all(
                  o['kind'] in picturebook.KINDS and o['color'] in picturebook.COLORS and
                  o['size'] in picturebook.OBJECT_SIZES and o['where'] in picturebook.PLACES for o in objects))
    except (TypeError, KeyError):
        return None
    return {'sky': scene['sky'], 'ground': scene['ground'],
            'objects': [{k: o[k] for k in ('kind', 'color', 'size', 'where')} for o in objects]} if ok else None


def made_before(path, model_id=None, sampling=None):
    """The descriptions an earlier run appended to path; a file of something else, or (given model_id) one made by
    another checkpoint or with other sampling settings (same_run), is refused as it is, never appended to."""
    def descriptions(made):
        if any(not isinstance(m.get('text'), str) or 'style' not in m for m in made):
            raise UserError(f'{path} holds records that are not descriptions by sample.py; give another --out')
        if model_id is not None:
            same_run(made, model_id, sampling, path)
    return data.read_log(path, check=descriptions)


# what a description depends on besides the model
SAMPLING = ('task', 'style', 'temperature', 'top_k', 'max_new_tokens', 'seed')


def same_run(made, model_id, sampling, path):
    """Refuse to add to descriptions made by another checkpoint or with other sampling settings (one line naming
    the clash); path is left as it is."""
    for m in made:
        if m.get('model') != model_id:
            by = f"checkpoint {m['model'][:12]}" if isinstance(m.get('model'), str) else 'a checkpoint it does not name'
            raise UserError(f'{path} holds descriptions by {by}, not by this one ({model_id[:12]}, the SHA-256 of '
                            'ckpt.pt): give another --out, or delete it to describe everything again')
        if m.get('sampling') != sampling:
            was = m.get('sampling') if isinstance(m.get('sampling'), dict) else {}
            clash = ', '.join(f'--{k}={was.get(k)} there, {sampling[k]} now' for k in SAMPLING if was.get(k) != sampling[k])
            raise UserError(f'{path} holds descriptions made with other settings ({clash}): give another --out, or '
                            'the same settings to go on')


def key(description):
    """What a description answers: which record, in which style, from which beginning."""
    return str(description.get('id')), description['style'], description.get('prompt')


if __name__ == '__main__':
    run_cli(main)
