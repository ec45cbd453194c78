"""
Grade what a NanoVLM wrote.

    python grade.py samples.jsonl [more_samples.jsonl ...] --judge=grounding

Input: the JSONL files sample.py writes, one per model; each is a row of the table.

Judges:
  grounding  exact and offline, for picture-book images, whose true scene each sample record carries. A mention is
             an object kind with the colour word just before it ("the red ball", "two blue cars"). Precision: the
             share of the (colour, kind) pairs a text mentions that are really in the picture. Recall: the share of
             the picture's (colour, kind) pairs that the text mentions. Both pooled over all texts of a file.
"""
import json
import re

from data import COLORS, KINDS, PLURALS, read_jsonl
from model import UserError, parse_flags, run_cli

DEFAULTS = dict(
    judge='grounding',  # which judge: grounding
    json='',            # also write the results as JSON to this file
)

WORD_KIND = {**{k: k for k in KINDS}, **{p: k for k, p in PLURALS.items()}}  # 'balls' -> 'ball'


def mentions(text):
    """The (colour, kind) pairs a text names: a colour word directly followed by a kind, singular or plural."""
    pairs = set()
    for sentence in re.split(r'[.!?;:,]', text.lower()):  # a colour ending one clause does not name the next thing
        words = re.findall(r'[a-z]+', sentence)
        pairs |= {(a, WORD_KIND[b]) for a, b in zip(words, words[1:]) if a in COLORS and b in WORD_KIND}
    return pairs


def truth(scene):
    return {(o['color'], o['kind']) for o in scene['objects']}


def grounding(records):
    """Pooled precision and recall of colour-kind mentions against each record's scene."""
    said = present = right = 0
    for r in records:
        if 'scene' not in r:
            raise UserError(f"record {r.get('id')} has no scene: the grounding judge needs picture-book samples")
        m, t = mentions(r['text']), truth(r['scene'])
        said, present, right = said + len(m), present + len(t), right + len(m & t)
    return {'n': len(records), 'precision': right / said if said else 0.0, 'recall': right / present if present else 0.0,
            'mentions': said, 'objects': present}


def main(argv):
    files = [a for a in argv if not a.startswith('--')]
    flags = parse_flags(DEFAULTS, [a for a in argv if a.startswith('--')])
    if not files:
        raise UserError('name at least one samples JSONL file (written by sample.py)')
    if flags['judge'] != 'grounding':
        raise UserError(f"unknown judge {flags['judge']!r}; choose grounding")
    results = {path: grounding(read_jsonl(path)) for path in files}
    width = max(len(p) for p in files)
    print(f"{'samples':<{width}}  {'n':>5}  {'precision':>9}  {'recall':>6}  {'mentions':>8}  {'objects':>7}")
    for path, r in results.items():
        print(f"{path:<{width}}  {r['n']:>5}  {r['precision']:>9.3f}  {r['recall']:>6.3f}  {r['mentions']:>8}  {r['objects']:>7}")
    if flags['json']:
        with open(flags['json'], 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    run_cli(main)
