"""
Describe pictures with a trained NanoVLM, or complete a description you begin.

    python sample.py --out_dir=out-tiny --image=data/picturebook/images/test-00000.png
    python sample.py --out_dir=out-tiny --image=photo.jpg --prompt="The red" --style=long
    python sample.py --out_dir=out-tiny --jsonl=data/picturebook/test.jsonl --out=samples.jsonl

How the style is chosen: one model learns both styles. Every training text starts with a style token, <|short|> or
<|long|>, and the model learns to write a ShortDesc after the first and a LongDesc after the second (the paper
trained a separate model per dataset; one model with a style token is cheaper and shares what it sees). --style
picks the token; a --prompt is the beginning of the description, which the model continues.

With --jsonl every record of a dataset file is described (images resolved relative to that file) and written to
--out as {"id", "image", "style", "prompt", "text", "reference", "dataset"}: text is the whole description, the
prompt included, reference the record's own description in that style, and dataset the folder of the JSONL (where
grade.py finds the training text). The record's "scene", if it has one, is copied so that grade.py can check the
text against the picture. --task=complete is the paper's test: each record of a test.jsonl is completed from its
own beginning (its "prompts", 6-7 words short, 18-20 long):

    python sample.py --out_dir=out-tiny --jsonl=data/picturebook/test.jsonl --task=complete --style=long --out=long.jsonl
"""
import os
from itertools import groupby

import numpy as np
import torch

import data
from checkpoint import load_checkpoint, model_from_checkpoint
from cli import UserError, parse_flags, pick_device, run_cli
from data import describe

DEFAULTS = dict(
    out_dir='out-tiny',     # folder of the checkpoint (ckpt.pt)
    image='',               # describe this one image ...
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
)


def main(argv):
    f = parse_flags(DEFAULTS, argv, minimum={'batch_size': 1, 'max_new_tokens': 1, 'n': 0, 'top_k': 0, 'temperature': 0},
                    doc=__doc__, sources=['sample'])
    if bool(f['image']) == bool(f['jsonl']):
        raise UserError('give one of --image=PATH or --jsonl=FILE')
    if f['jsonl'] and not f['out']:
        raise UserError('--jsonl needs --out=FILE for the descriptions')
    if f['task'] not in ('describe', 'complete') or f['task'] == 'complete' and not f['jsonl']:
        raise UserError(f"--task={f['task']}: use describe, or complete with --jsonl")
    device = pick_device(f['device'])
    model, tokenizer = model_from_checkpoint(load_checkpoint(os.path.join(f['out_dir'], 'ckpt.pt'), device))
    model.to(device)
    torch.manual_seed(f['seed'])
    size = model.config.img_size
    opts = dict(style=f['style'], temperature=f['temperature'], top_k=f['top_k'], max_new_tokens=f['max_new_tokens'])
    if f['image']:
        print(describe(model, tokenizer, data.load_image(f['image'], size)[None], prompt=f['prompt'], **opts)[0])
        return
    records = data.read_jsonl(f['jsonl'])[:f['n'] or None]
    if f['task'] == 'complete':
        missing = [r.get('id') for r in records if f['style'] not in r.get('prompts', {})]
        if missing:
            raise UserError(f"{len(missing)} records of {f['jsonl']} (e.g. {missing[0]}) have no {f['style']} beginning "
                            "in \"prompts\": use a test.jsonl made by this version of data.py or build.py")
    prompts = [r['prompts'][f['style']] if f['task'] == 'complete' else f['prompt'] for r in records]
    root = os.path.dirname(f['jsonl'])
    out = [None] * len(records)
    lengths = [len(tokenizer.encode(p.rstrip())) for p in prompts]
    batches = []  # prompts of equal length in tokens are described together: a batch is one tensor
    for _, same in groupby(sorted(range(len(records)), key=lengths.__getitem__), key=lengths.__getitem__):
        same = list(same)
        batches += [same[k:k + f['batch_size']] for k in range(0, len(same), f['batch_size'])]
    for batch in batches:
        paths = [os.path.join(root, records[i]['image']) for i in batch]
        texts = describe(model, tokenizer, np.stack([data.load_image(p, size) for p in paths]),
                         prompt=[prompts[i] for i in batch], **opts)
        for i, path, text in zip(batch, paths, texts):
            r = records[i]
            out[i] = {'id': r.get('id', path), 'image': path, 'style': f['style'], 'prompt': prompts[i], 'text': text,
                      'reference': r.get(f['style'], ''), 'dataset': root,
                      **({'scene': r['scene']} if 'scene' in r else {})}
        print(f'described {sum(o is not None for o in out)}/{len(records)}', end='\r', flush=True)
    data.write_jsonl(f['out'], out)
    print(f'\nwrote {len(out)} descriptions to {f["out"]}')


if __name__ == '__main__':
    run_cli(main)
