"""
Grade what NanoVLMs wrote: the paper's GPT-4o grading, and two judges that need no API.

    python grade.py mini.jsonl base.jsonl large.jsonl --judge=gpt     # the paper's grades (OPENAI_API_KEY)
    python grade.py samples.jsonl --judge=grounding                   # picture-book: is what it says true?
    python grade.py samples.jsonl --judge=rouge                       # does it recite its training text?

Input: the JSONL files sample.py writes, one per model; each becomes a row of the table, named by its file. Every
score is shown as its mean and 95% confidence interval; --json=FILE writes the same for scripts.

  gpt        The paper's protocol, after TinyStories: a judge model reads each text as a young child's exercise (the
             child got the beginning and wrote the rest) and scores grammar, consistency, creativity, meaningfulness
             and plot out of 10; with --with_image=true it also sees the picture and scores how well the text fits
             it. Any OpenAI-compatible server (--base_url, --model). Each grade is appended to --cache the moment it
             arrives, so a rerun pays for nothing twice. A reply that lacks a score is a failed grade, counted as
             such and asked again on the next run, never a zero. Intervals: Student's t over the texts.
  grounding  Exact and offline, for picture-book samples, which carry their true scene. Precision: the share of the
             facts a text states (an object's colour and kind, its size, how many there are, the sky, the ground)
             that are true of the picture. Recall: the share of the picture's objects (colour and kind) it names.
             Both pooled over a file's texts; intervals by resampling the texts (bootstrap). Words: the mean length
             of a text (the short style has 20-25, the long 60-70).
  rouge      Offline: ROUGE-L of each completion (the words the model wrote after the beginning it was given)
             against its nearest training description of the same style: precision (how much of what it wrote
             follows a training text in order), recall and F1; and how many texts are a training description word
             for word. The training text is the train.jsonl beside the file sample.py read (or --train=FILE).

With --judge=gpt --batch the texts are graded as OpenAI Batch API jobs (batch.py): half the price, within 24 hours,
the steps kept in CACHE.batch so that a rerun finds its batches and never pays twice; a grade that failed or broke
the rules is asked again live.
"""
import hashlib
import json
import math
import os
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np

import batch
import chat
import data
from cli import UserError, hold, let_go, parse_flags, run_cli, write_file
from picturebook import facts, true_of

DEFAULTS = {
    'judge': 'grounding',   # gpt, grounding or rouge
    'json': '',             # also write the results as JSON to this file
    # gpt: the chat model's flags (chat.py), and
    **chat.FLAGS,
    'max_attempts': 2,      # replies asked for per text before its grade counts as failed
    'with_image': False,    # show the judge the picture too, and score how well the text fits it
    'cache': 'grade_cache.jsonl',  # every grade, appended as it arrives; a rerun sends only what is not in it
    # rouge
    'train': '',            # training descriptions to compare with (default: train.jsonl of the samples' dataset)
}


# -----------------------------------------------------------------------------
# Means with 95% intervals

T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df):
    """The 97.5% point of Student's t with df degrees of freedom: a table to 30, then the Cornish-Fisher series."""
    if df <= 30:
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(values):
    """{'mean', 'lo', 'hi'}: the mean and its 95% interval (Student's t); no interval for fewer than two values."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {'mean': None, 'lo': None, 'hi': None}
    mean = float(x.mean())
    if len(x) < 2:
        return {'mean': mean, 'lo': None, 'hi': None}
    half = t975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {'mean': mean, 'lo': mean - half, 'hi': mean + half}


def ratio_ci(numerators, denominators, resamples=2000, seed=0):
    """{'mean', 'lo', 'hi'}: the pooled ratio sum(numerators) / sum(denominators) over texts, with a 95% bootstrap
    interval (texts drawn with replacement; seeded, so the same samples give the same interval)."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if den.sum() == 0:
        return {'mean': None, 'lo': None, 'hi': None}
    idx = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    n, d = num[idx].sum(1), den[idx].sum(1)
    lo, hi = np.percentile(n[d > 0] / d[d > 0], [2.5, 97.5])
    return {'mean': float(num.sum() / den.sum()), 'lo': float(lo), 'hi': float(hi)}


# -----------------------------------------------------------------------------
# The GPT judge

GRADER_PROMPT = """\
You are a kind but exacting teacher. A young child, three or four years old, was shown a picture and the beginning
of a description of it, and wrote the rest of the description. Grade the child's part as a writing exercise, read
as the continuation of the beginning. Score each of these as a whole number from 1 to 10:
- grammar: are the child's sentences correct English?
- consistency: does the child's part agree with the beginning and with itself?
- creativity: is it fresh and imaginative, rather than a dull list or a stock phrase?
- meaningfulness: does every sentence make sense?
- plot: does the description hang together as one small scene or story, and come to a natural end?
{picture}First write a short assessment (one or two sentences), then the scores. Reply with one JSON object only."""
PICTURE_SCORE = '- picture: you see the picture too; how well does the whole description fit it?\n'
SCORES = ['grammar', 'consistency', 'creativity', 'meaningfulness', 'plot']


def score_names(with_image):
    return SCORES + ['picture'] * with_image


def grade_format(with_image):
    """Structured output: an assessment, then every score as an integer."""
    properties = {'assessment': {'type': 'string'}, **{s: {'type': 'integer'} for s in score_names(with_image)}}
    return {'type': 'json_schema', 'json_schema': {'name': 'grade', 'strict': True, 'schema': {
        'type': 'object', 'additionalProperties': False, 'required': list(properties), 'properties': properties}}}


def completion(record):
    """The words the model wrote: the text after the beginning it was given."""
    text, prompt = record['text'], record.get('prompt', '')
    return text[len(prompt):].strip() if prompt and text.startswith(prompt) else text


def grade_text(record):
    beginning = record.get('prompt', '').strip()
    if not beginning:
        return f'The child was given no beginning and wrote all of it: "{completion(record)}"'
    return f'The beginning: "{beginning}"\nThe child\'s part: "{completion(record)}"'


def grade_messages(record, with_image):
    user = [{'type': 'text', 'text': grade_text(record)}] + ([chat.image_content(record['image'])] if with_image else [])
    return [{'role': 'system', 'content': GRADER_PROMPT.format(picture=PICTURE_SCORE if with_image else '')},
            {'role': 'user', 'content': user}]


def check_grade(reply, names):
    """The scores in a reply, {name: number}, or None and what is wrong with it: every score must be there, a number
    from 1 to 10 (a numeric string such as "7" or "7/10" is read as one)."""
    try:
        obj = chat.parse_json_reply(reply)
    except ValueError as e:
        return None, str(e)
    scores = {}
    for name in names:
        value = obj.get(name)
        if isinstance(value, str) and re.fullmatch(r'\s*\d+(\.\d+)?\s*(/\s*10)?\s*', value):
            value = float(value.split('/')[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f'the "{name}" score is missing or not a number'
        if not 1 <= value <= 10:
            return None, f'the "{name}" score is {value}; scores go from 1 to 10'
        scores[name] = value
    return scores, None


def grade_key(record, c):
    """What a grade depends on, hashed: the judge, its instructions, the beginning, the completion and the picture."""
    what = [c.model, GRADER_PROMPT, c.with_image, record.get('prompt', ''), completion(record),
            os.path.abspath(record['image']) if c.with_image else '']
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def cached_grades(path):
    """key -> the latest successful grade in the cache (failed grades are asked again). A file that is not a grade
    cache is refused as it is."""
    def grades(records):
        if any(not isinstance(r.get('key'), str) or not isinstance(r.get('scores', {}), dict) for r in records):
            raise UserError(f'{path} holds records that are not grades; give another --cache')
    return {r['key']: r for r in data.read_log(path, check=grades) if 'scores' in r}


def gpt(records, c):
    """Grade every text that is not in the cache yet, then summarise each file's grades from the cache. One grading
    at a time holds the cache: a second is refused, so nothing is paid for twice."""
    lock = hold(c.cache + '.lock', c.cache, 'another grading', 'give it another --cache')
    try:
        return grade_all(records, c)
    finally:
        let_go(lock)


def grade_all(records, c):
    cache = cached_grades(c.cache)
    keys = {path: [grade_key(r, c) for r in rs] for path, rs in records.items()}
    todo = {key: r for path, rs in records.items() for key, r in zip(keys[path], rs) if key not in cache}
    total = sum(map(len, records.values()))
    folder = c.cache + '.batch'  # --batch's files and steps (batch.py)
    new = dict(batch.fresh(folder, list(todo.items()), lambda item: item[0], c))
    if not todo:
        print(f'all {total:,} grades are in {c.cache}: nothing to send')
    else:
        system = GRADER_PROMPT.format(picture=PICTURE_SCORE if c.with_image else '')
        plan = chat.estimate([system + grade_text(r) for r in new.values()], c.with_image, 120, c)
        if new and not chat.confirm(f'{len(todo):,} texts to grade ({total - len(todo):,} are in {c.cache}): {plan}', c):
            return None
        endpoint = chat.ChatEndpoint(c.base_url, c.model, c.timeout, c.max_retries)
        names, response_format = score_names(c.with_image), grade_format(c.with_image)

        def request(item):
            return dict(messages=grade_messages(item[1], c.with_image), response_format=response_format, temperature=0)

        def grade_one(item, first=None):
            key, record = item
            try:
                asked = request(item)
            except UserError as e:  # the picture cannot be read: nothing is sent, the others are graded
                return {'key': key, 'id': record.get('id'), 'failed': str(e),
                        'usage': {'prompt_tokens': 0, 'completion_tokens': 0}}
            scores, problem, usage = endpoint.ask(check=lambda reply: check_grade(reply, names),
                                                  max_attempts=c.max_attempts, first=first, **asked)
            return {'key': key, 'id': record.get('id'), **({'scores': scores} if scores else {'failed': problem}),
                    'usage': usage}

        words = ('graded', 'texts', 'failed')
        if c.batch or len(new) < len(todo):  # a batch holds some: they are collected, not sent again
            batch.run(endpoint, list(todo.items()), lambda item: item[0], request, grade_one, c.cache, folder, c, words)
        else:
            chat.run_jobs(endpoint, list(todo.items()), grade_one, c.cache, c, words)
        cache = cached_grades(c.cache)
    results = {}
    for path, rs in records.items():
        grades = [cache[key]['scores'] for key in keys[path] if key in cache]
        results[path] = {'judge': 'gpt', 'model': c.model, 'n': len(grades), 'failed': len(rs) - len(grades),
                         'scores': {s: mean_ci([g[s] for g in grades]) for s in score_names(c.with_image)}}
    return results


# -----------------------------------------------------------------------------
# The grounding judge: what a picture-book text states, checked against the scene it describes. The facts are read
# by picturebook.facts, the same file that writes the descriptions, so the reader knows the writer's language.

def grounding_counts(text, scene):
    """The grounding judge on one text: the facts it states, those the scene bears out, the picture's objects
    (distinct colour and kind) and those it names. grounding pools them; the sample sheet and the live page show
    them under the text. Precision alone misses a text that names one object of four, however often."""
    said, there = facts(text), {(o['color'], o['kind']) for o in scene['objects']}
    return {'stated': len(said), 'true': sum(true_of(f, scene) for f in said), 'objects': len(there),
            'named': len(there & {f[1:] for f in said if f[0] == 'object'})}


def grounding(records):
    """Precision of the stated facts and recall of the picture's objects, pooled over the texts."""
    stated, true, named, objects = [], [], [], []
    for r in records:
        if 'scene' not in r:
            raise UserError(f"record {r.get('id')} has no scene: the grounding judge needs picture-book samples")
        c = grounding_counts(r['text'], r['scene'])
        stated.append(c['stated'])
        true.append(c['true'])
        named.append(c['named'])
        objects.append(c['objects'])
    return {'judge': 'grounding', 'n': len(records),
            'scores': {'precision': ratio_ci(true, stated), 'recall': ratio_ci(named, objects),
                       'words': mean_ci([len(r['text'].split()) for r in records])},  # how long: is it the style asked?
            'facts': sum(stated), 'true': sum(true), 'objects': sum(objects), 'named': sum(named)}


# -----------------------------------------------------------------------------
# The memorisation check: ROUGE-L against the nearest training description

def words(text):
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def lcs(a, b):
    """The length of the longest common subsequence of two word lists (dynamic programming, a row at a time)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def rouge_l(candidate, reference):
    """ROUGE-L of two word lists: (precision, recall, F1) of their longest common subsequence."""
    m = lcs(candidate, reference)
    if m == 0:
        return 0.0, 0.0, 0.0
    p, r = m / len(candidate), m / len(reference)
    return p, r, 2 * p * r / (p + r)


class TrainingText:
    """The training descriptions of one style, indexed to find the nearest to a text by ROUGE-L F1 without an LCS
    against every one: a common subsequence is never longer than the words two texts share, so descriptions are
    tried in order of that bound, and the search stops when the bound falls below the best F1 found."""

    def __init__(self, texts):
        self.texts = [words(t) for t in texts]
        self.exact = {tuple(w) for w in self.texts}
        self.lengths = np.array([len(w) for w in self.texts], dtype=float)
        postings = {}
        for i, w in enumerate(self.texts):
            for word, k in Counter(w).items():
                postings.setdefault(word, []).append((i, k))
        self.postings = {word: (np.array([i for i, _ in p]), np.array([k for _, k in p])) for word, p in postings.items()}

    def nearest(self, candidate):
        """(precision, recall, F1, index) of the nearest training description (index -1 if none shares a word)."""
        shared = np.zeros(len(self.texts))
        for word, k in Counter(candidate).items():
            if word in self.postings:
                ids, counts = self.postings[word]
                shared[ids] += np.minimum(counts, k)
        bound = 2 * shared / (len(candidate) + self.lengths)  # F1 if the whole overlap were in order
        best = (0.0, 0.0, 0.0, -1)
        for i in np.argsort(-bound, kind='stable'):
            if bound[i] <= best[2]:
                break
            p, r, f = rouge_l(candidate, self.texts[i])
            if f > best[2]:
                best = (p, r, f, int(i))
        return best


def training_index(train_records):
    """style -> TrainingText of the training descriptions in that style."""
    return {s: TrainingText([r[s] for r in train_records if r.get(s)]) for s in data.STYLES}


def rouge(records, index):
    """Each completion's ROUGE-L against its nearest training description of the same style (index: from
    training_index), and the texts that are a training description word for word."""
    p, r, f, copied = [], [], [], 0
    for rec in records:
        train = index[rec.get('style', 'short')]
        scores = train.nearest(words(completion(rec)))
        for values, x in zip((p, r, f), scores):
            values.append(x)
        copied += tuple(words(rec['text'])) in train.exact
    return {'judge': 'rouge', 'n': len(records), 'copied': copied,
            'scores': {'precision': mean_ci(p), 'recall': mean_ci(r), 'f1': mean_ci(f)}}


def training_path(samples, c):
    """Where the training descriptions the samples' model learned from are: --train, or train.jsonl of their dataset."""
    if not c.train and 'dataset' not in samples[0]:
        raise UserError('these samples do not say their dataset; give the training descriptions with --train=FILE')
    return c.train or os.path.join(samples[0]['dataset'], 'train.jsonl')


# -----------------------------------------------------------------------------
# Input and output

def read_samples(path):
    records = data.read_jsonl(path)
    if not records:
        raise UserError(f'{path} has no samples')
    missing = [r.get('id') for r in records if not isinstance(r.get('text'), str)]
    if missing:
        raise UserError(f'{path}: {len(missing)} records have no "text" (e.g. {missing[0]}); is it a file sample.py wrote?')
    return records


def show(ci, digits):
    if ci['mean'] is None:
        return '-'
    if ci['lo'] is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def table(results):
    """The results as a table a person reads at a glance: a row per file, a column per score (mean [95% interval])."""
    first = next(iter(results.values()))
    digits = 2 if first['judge'] == 'gpt' else 3
    extra = {'gpt': ['failed'], 'grounding': ['facts', 'true', 'objects', 'named'], 'rouge': ['copied']}[first['judge']]
    header = ['samples', 'n'] + extra + list(first['scores'])
    rows = [[path, str(r['n'])] + [str(r[k]) for k in extra]
            + [show(ci, 1 if name == 'words' else digits) for name, ci in r['scores'].items()]
            for path, r in results.items()]
    widths = [max(len(x) for x in column) for column in zip(header, *rows)]
    return '\n'.join('  '.join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
                     for line in [header] + rows)


def main(argv):
    files = [a for a in argv if not a.startswith('-')]
    c = SimpleNamespace(**parse_flags(DEFAULTS, [a for a in argv if a.startswith('-')], minimum=chat.MINIMUM,
                                      doc=__doc__, sources=['grade', 'chat']))
    if not files:
        raise UserError('name at least one samples JSONL file (written by sample.py)')
    if c.judge not in ('gpt', 'grounding', 'rouge'):
        raise UserError(f'unknown judge {c.judge!r}; choose gpt, grounding or rouge')
    records = {path: read_samples(path) for path in files}
    if c.judge == 'gpt':
        results = gpt(records, c)
        if results is None:
            return
    elif c.judge == 'grounding':
        results = {path: grounding(rs) for path, rs in records.items()}
    else:
        train = {path: training_path(rs, c) for path, rs in records.items()}
        indexes = {t: training_index(data.read_jsonl(t)) for t in set(train.values())}  # once for files that share it
        results = {path: rouge(rs, indexes[train[path]]) for path, rs in records.items()}
    print(table(results))
    if c.json:
        write_file(c.json, lambda f: json.dump(results, f, indent=2),
                   'the table above' + (f', every grade in {c.cache}' if c.judge == 'gpt' else ''))


if __name__ == '__main__':
    run_cli(main)
