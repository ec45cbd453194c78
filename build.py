"""
Build the paper's datasets from photos: ShortDesc and LongDesc, written by a chat model in a young child's words.

The paper's recipe: about 28k COCO images, each with five human captions; GPT-4o read the captions and wrote a
young child's description of the scene, once short and once long. Here the same for COCO (--dataset=coco), for
any folder of pictures (--dataset=folder: the model looks at each picture, as there are no captions), and for
texts a user already has (--dataset=jsonl: no model at all). Any OpenAI-compatible server can stand in for
GPT-4o (--base_url, --model): a local open model costs nothing.

A build takes hours and costs money, so it never loses work: each finished image is appended to OUT/build.jsonl
and flushed at once, a rerun skips what is there, and the split files are written from that log at the end.

The result is a dataset folder in data.py's format (train/val/test.jsonl beside the pictures), which train.py,
sample.py and grade.py read like any other. The chat model is reached through chat.py, as grade.py reaches its judge.

    python build.py --dataset=coco --n=28000                # the paper's datasets (GPT-4o, OPENAI_API_KEY)
    python build.py --dataset=coco --n=28000 --with_image   # GPT-4o also sees the photo, not only the captions
    python build.py --dataset=folder --images=~/photos --base_url=http://localhost:8000/v1 --model=qwen2.5-vl
    python build.py --dataset=jsonl --path=mine.jsonl       # {"image": "a.jpg", "short": "...", "long": "..."}
    python build.py --dataset=coco --n=28000 --batch        # the same as Batch API jobs: half the price, within 24 hours

With --batch the requests go as OpenAI Batch API jobs (batch.py), their steps kept in OUT/batch: a rerun of the same
command finds its batches and never sends a request twice; a reply that failed or broke the rules goes back out live.
"""
import contextlib
import os
import random
import re
import time
import urllib.parse
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from types import SimpleNamespace

import requests
from PIL import Image

import batch
import chat
from cli import UserError, disk_full, file_hash, hold, inside, let_go, loads, parse_flags, run_cli, write_failed
from data import add_beginnings, open_image, read_jsonl, read_log, write_jsonl
from picturebook import LENGTHS, STYLES, sentence_count, word_count

# -----------------------------------------------------------------------------
# The prompts, and the rules every reply must keep

SYSTEM_PROMPT = """\
You write the text of a picture book for children who are three or four years old.
Use only simple words that such a child knows, and short, simple sentences.
Describe one consistent scene: what is in the picture, what the people or animals are doing, and, if you like,
what they might feel or want. Never say anything the picture does not show.
Be imaginative and fresh: begin each description in your own way. Never open with filler such as "Oh", "Wow",
"Look", "In this picture" or "This is". No exclamation marks, no quotation marks, no lists, no names.
Reply with one JSON object and nothing else: {"short": "...", "long": "..."}, where
short is 20 to 25 words in 2 or 3 sentences, and long is 60 to 70 words in 5 or 6 sentences."""

CAPTIONS_PROMPT = """\
Five people each wrote a caption for the same photo:
{captions}
Where they disagree, keep what most of them say. Write the short and the long description of the photo."""

IMAGE_PROMPT = "Write the short and the long description of this picture."

DESCRIPTIONS_FORMAT = {  # structured output: the server must reply with exactly this JSON object
    'type': 'json_schema',
    'json_schema': {'name': 'descriptions', 'strict': True, 'schema': {
        'type': 'object', 'additionalProperties': False, 'required': STYLES,
        'properties': {s: {'type': 'string'} for s in STYLES}}},
}
FILLER_OPENING = re.compile(r'(oh|wow|look|hey|yay|in this picture|in the picture)\b', re.IGNORECASE)


def check_descriptions(reply):
    """The descriptions in a reply as {'short', 'long'}, or None and what is wrong, in words the model is told on a
    retry: each must have the style's number of words and sentences, be one plain paragraph and open freshly."""
    try:
        obj = chat.parse_json_reply(reply)
    except ValueError as e:
        return None, str(e)
    texts = {}
    for style in STYLES:
        text = obj.get(style)
        if not isinstance(text, str) or not text.strip():
            return None, f'the JSON object has no "{style}" description'
        lo, hi, smin, smax = LENGTHS[style]
        flat = ' '.join(text.split())
        words, sentences = word_count(flat), sentence_count(flat)
        if not lo <= words <= hi:
            return None, f'the {style} description has {words} words; it must have {lo} to {hi}'
        if not smin <= sentences <= smax:
            return None, f'the {style} description has {sentences} sentences; it must have {smin} to {smax}'
        if '\n' in text.strip() or re.match(r'\s*([-*•]|\d+[.)])\s', text):
            return None, f'the {style} description is a list; it must be one plain paragraph'
        if re.search(r'["“”«»]', flat) or '!' in flat:
            return None, f'the {style} description has quotation or exclamation marks; it must have none'
        filler = FILLER_OPENING.match(flat)
        if filler:
            return None, f'the {style} description opens with filler ("{filler.group()}"); begin it another way'
        texts[style] = flat
    return texts, None


# -----------------------------------------------------------------------------
# One image, described: the request, the rules checked, a reply that breaks them sent back with what is wrong.

def request_text(item):
    captions = item.get('captions')
    return CAPTIONS_PROMPT.format(captions='\n'.join(f'- {s}' for s in captions)) if captions else IMAGE_PROMPT


def user_message(item, out_dir, c):
    """The request about one item: its captions, its picture when there are none (or with --with_image), or both."""
    parts = [{'type': 'text', 'text': request_text(item)}]
    if c.with_image or not item.get('captions'):
        parts.append(chat.image_content(os.path.join(out_dir, item['image'])))
    return {'role': 'user', 'content': parts}


def request(item, out_dir, c):
    """What is asked about one item (chat.ChatEndpoint.ask's arguments); a UserError if its picture cannot be read."""
    return dict(messages=[{'role': 'system', 'content': SYSTEM_PROMPT}, user_message(item, out_dir, c)],
                response_format=DESCRIPTIONS_FORMAT)


def describe_image(endpoint, item, out_dir, c, first=None):
    """The build record of one image: its two descriptions, or why it was skipped; with the tokens it took. first:
    its reply from a batch, if one came."""
    try:
        asked = request(item, out_dir, c)
    except UserError as e:  # the picture cannot be read: no request is sent
        return item | {'skipped': str(e), 'usage': {'prompt_tokens': 0, 'completion_tokens': 0}}
    texts, problem, usage = endpoint.ask(check=check_descriptions, max_attempts=c.max_attempts, first=first, **asked)
    return item | (texts or {'skipped': problem}) | {'usage': usage}


# The build loop: what is done is read from the log, the rest is described by a bounded pool of threads, each
# record appended whole and flushed the moment it is ready.

def describe_all(items, out_dir, c):
    """Describe every item not yet in OUT/build.jsonl. Returns False if the user declined to spend."""
    log_path = os.path.join(out_dir, 'build.jsonl')
    done = {r['id'] for r in read_log(log_path, check=build_log)}
    todo = [it for it in items if it['id'] not in done]
    folder = os.path.join(out_dir, 'batch')  # --batch's files and steps (batch.py)
    new = batch.fresh(folder, todo, ident, c)
    if not todo:
        return True
    if new:
        plan = chat.estimate([SYSTEM_PROMPT + request_text(it) for it in new], c.with_image or not new[0].get('captions'),
                             170, c)
        if not chat.confirm(('' if not done else f'{len(done):,} images are already done; ') + plan, c):
            return False
    endpoint = chat.ChatEndpoint(c.base_url, c.model, c.timeout, c.max_retries)
    words = ('described', 'images', 'skipped')
    if c.batch or len(new) < len(todo):  # a batch holds some: they are collected, not sent again
        batch.run(endpoint, todo, ident, lambda item: request(item, out_dir, c),
                  lambda item, first: describe_image(endpoint, item, out_dir, c, first), log_path, folder, c, words)
    else:
        chat.run_jobs(endpoint, todo, lambda item: describe_image(endpoint, item, out_dir, c), log_path, c, words)
    return True


def ident(item):
    """An item's custom_id in a batch."""
    return str(item['id'])


def build_log(records):
    """read_log's check of OUT/build.jsonl: every record is an image's, with its id."""
    if any('id' not in r for r in records):
        raise UserError('build.jsonl holds records that are not a build\'s (one has no "id"); give another --out')


def assign_splits(items, n_test):
    """Items in a seeded random order become n_test test items, then 10% validation, the rest training (the paper's
    90/10). In place: each item gets a 'split'."""
    n_val = max(1, round(0.1 * (len(items) - n_test))) if len(items) - n_test >= 2 else 0
    for i, it in enumerate(items):
        it['split'] = 'test' if i < n_test else 'val' if i < n_test + n_val else 'train'
    return items


def write_splits(out_dir, items, records):
    """train/val/test.jsonl from the finished records, in the items' order; test records get their beginnings."""
    by_id = {r['id']: r for r in records if 'skipped' not in r}
    for split in ('train', 'val', 'test'):
        rows = [{k: v for k, v in by_id[it['id']].items() if k not in ('split', 'usage')}
                for it in items if it['split'] == split and it['id'] in by_id]
        write_jsonl(os.path.join(out_dir, f'{split}.jsonl'), [add_beginnings(r) for r in rows] if split == 'test' else rows,
                    'what was there before; a rerun writes the splits again, asking the model nothing')
    skipped = [r for r in records if 'skipped' in r]
    counts = {s: sum(it['split'] == s and it['id'] in by_id for it in items) for s in ('train', 'val', 'test')}
    print(f"wrote {counts['train']:,}/{counts['val']:,}/{counts['test']:,} train/val/test records to {out_dir}"
          + (f'; {len(skipped):,} images skipped (reasons in build.jsonl), e.g. {skipped[0]["skipped"]}' if skipped else ''))


# -----------------------------------------------------------------------------
# The sources: where the images (and captions) come from.

def download(url, path, verify, timeout=60.0, max_bytes=64 << 20, stall=None, retries=5, show=''):
    """Download url to path, each try read by chat.fetch (within timeout seconds, stall seconds at most without a
    byte, at most max_bytes). A partial download (path.part) is resumed with an HTTP Range request, and a file only
    takes its final name after its length and verify(path.part) have passed, so a file at path is always whole. With
    show, a progress line of that name."""
    if os.path.exists(path):
        return
    part, problem, progress = path + '.part', '', chat.Progress()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    for attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            with contextlib.ExitStack() as files:
                total = None

                def to_part(r):  # a 206 goes on from the part; a 200 (the server ignored the range) starts it again
                    nonlocal total
                    if r.status_code not in (200, 206):
                        return None
                    f = files.enter_context(open(part, 'ab' if r.status_code == 206 else 'wb'))
                    total = f.tell() + int(r.headers['Content-Length']) if 'Content-Length' in r.headers else None

                    def write(chunk):
                        f.write(chunk)
                        if show:
                            progress(f'{show}: {f.tell() / 1e6:,.1f}' + (f' of {total / 1e6:,.1f}' if total else '') + ' MB')
                    return write
                r = chat.fetch('GET', url, timeout, max_bytes, to_part, stall,
                               headers={'Range': f'bytes={have}-'} if have else {})
            if r.status_code == 416:  # the part is already whole, or the server changed the file: start again
                os.remove(part)
                continue
            if r.status_code not in (200, 206):
                problem = f'HTTP {r.status_code}'
                if r.status_code < 500 and r.status_code != 429:
                    break
                raise requests.ConnectionError(problem)
            if total is not None and os.path.getsize(part) != total:
                raise requests.ConnectionError(f'got {os.path.getsize(part)} of {total} bytes')
            problem = verify(part)
            if not problem:
                os.replace(part, path)
                if show:
                    progress(f'{show}: {os.path.getsize(path) / 1e6:,.1f} MB, verified', last=True)
                return
            os.remove(part)
        except (requests.RequestException, OSError) as e:
            if disk_full(e):  # waiting makes no room
                raise write_failed(e, path, 'every file downloaded before; a rerun downloads the rest', [part]) from None
            problem = str(e)
        time.sleep(min(60.0, chat.BACKOFF * 2 ** attempt))
    raise chat.RequestFailed(f'cannot download {url}: {problem}')


PHOTO_FORMATS = ('JPEG', 'PNG', 'WEBP', 'GIF', 'BMP', 'TIFF')  # what a downloaded picture may be: not XBM, which is
# C source that Pillow reads as a picture, and can be written to be a Python program as well


def verify_image(path):
    """None if path is a whole, readable photo in one of PHOTO_FORMATS, else what is wrong with it."""
    try:
        with Image.open(path) as im:
            if im.format not in PHOTO_FORMATS:
                return f'it is in {im.format} format, not a photo\'s ({", ".join(PHOTO_FORMATS)})'
    except Exception:  # what is wrong, open_image says below
        pass
    try:
        open_image(path)
    except UserError as e:
        return str(e)


def verify_zip(path):
    """None if path is a whole zip archive (every member's checksum is right, and all of them unpack to at most
    4 x ANNOTATIONS_BYTES), else what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as z:
            if sum(member.file_size for member in z.infolist()) > 4 * ANNOTATIONS_BYTES:
                return f'it unpacks to more than {4 * ANNOTATIONS_BYTES:,} bytes'
            bad = z.testzip()
        return f'{bad} in the archive is corrupt' if bad else None
    except zipfile.BadZipFile as e:
        return f'not a zip archive ({e})'


ANNOTATIONS_MD5 = {'images.cocodataset.org': 'f4bbac642086de4f52a3fdda2de5fa2c'}  # host -> the MD5 its archive
# must have (COCO's published checksum of annotations_trainval2017.zip, 252,907,541 bytes): the CRCs inside a zip
# can be forged along with its contents. A mirror's archive is checked by its CRCs alone.
ANNOTATIONS_SECONDS = 1800  # the longest one try at the COCO annotations (241 MB) may take; a rerun resumes it
ANNOTATIONS_BYTES = 512 << 20  # the archive (253 MB) and its captions (92 MB) are at most this long; a bomb is not


def coco_items(c, out_dir):
    """c.n + c.n_test COCO train2017 images with at least five captions, picked at random for the seed; the caption
    annotations (241 MB) and just those images are downloaded, not the 18 GB archive. An image whose file name
    would land outside OUT/images, or is not a picture's, is refused in one line and left out."""
    zip_path = os.path.join(out_dir, 'annotations_trainval2017.zip')
    md5 = ANNOTATIONS_MD5.get(urllib.parse.urlsplit(c.coco_url).hostname)

    def verify(path):
        if md5 and file_hash(path, 'md5') != md5:
            return f'it is not the archive COCO published (its MD5 is not {md5})'
        return verify_zip(path)
    try:
        download(f'{c.coco_url}/annotations/annotations_trainval2017.zip', zip_path, verify, ANNOTATIONS_SECONDS,
                 ANNOTATIONS_BYTES, stall=c.timeout, show='downloading the COCO annotations')
    except chat.RequestFailed as e:
        raise UserError(f'{e}; run again to resume the download')
    try:
        with zipfile.ZipFile(zip_path) as z, z.open('annotations/captions_train2017.json') as f:
            raw = f.read(ANNOTATIONS_BYTES + 1)  # never more, whatever the archive says of its size
        if len(raw) > ANNOTATIONS_BYTES:
            raise ValueError(f'the captions are over {ANNOTATIONS_BYTES:,} bytes')
        ann = loads(raw)
        captions = {}
        for a in sorted(ann['annotations'], key=lambda a: a['id']):
            captions.setdefault(a['image_id'], []).append(' '.join(a['caption'].split()))
        files = {im['id']: str(im['file_name']) for im in ann['images']}
    except (KeyError, TypeError, ValueError, AttributeError, zipfile.BadZipFile) as e:
        raise UserError(f'{zip_path} does not hold the COCO captions ({e or type(e).__name__}); delete it and run '
                        'again, or check --coco_url')
    eligible = sorted(i for i, caps in captions.items() if len(caps) >= 5 and i in files)
    n = c.n or 28000
    if n + c.n_test > len(eligible):
        raise UserError(f'COCO has {len(eligible):,} images with five captions, fewer than --n={n} plus '
                        f'--n_test={c.n_test}; ask for fewer')
    chosen = random.Random(c.seed).sample(eligible, n + c.n_test)
    items, images = [], os.path.join(out_dir, 'images')
    for i in chosen:
        try:
            inside(images, files[i], 'the annotations\' file name')
            if not files[i].lower().endswith(IMAGE_EXTENSIONS):
                raise UserError(f"the annotations' file name {files[i]!r} is not a picture's; refused")
        except UserError as e:
            print(f'skipped COCO image {i}: {e}')
            continue
        items.append({'id': f'coco-{i}', 'image': f'images/{files[i]}', 'captions': captions[i][:5]})
    items = assign_splits(items, c.n_test)
    os.makedirs(images, exist_ok=True)
    missing = [it for it in items if not os.path.exists(os.path.join(out_dir, it['image']))]
    failed = []

    def fetch(it):
        try:
            download(f"{c.coco_url}/train2017/{urllib.parse.quote(it['image'][len('images/'):])}",
                     os.path.join(out_dir, it['image']), verify_image, c.timeout)
        except chat.RequestFailed as e:
            failed.append((it['id'], str(e)))

    progress = chat.Progress()
    with ThreadPoolExecutor(c.workers) as pool:
        futures = [pool.submit(fetch, it) for it in missing]
        try:
            for k, future in enumerate(as_completed(futures), 1):
                future.result()  # a full disk stops the build
                progress(f'downloading images: {k:,}/{len(missing):,}')
        except UserError:
            pool.shutdown(cancel_futures=True)  # the downloads not yet started never start
            raise
    if missing:
        progress(f'downloaded {len(missing) - len(failed):,} images' + (
            f'; {len(failed)} failed (run again to retry them):' if failed else ''), last=True)
    for i, why in sorted(failed):
        print(f'skipped COCO image {i[len("coco-"):]}: {why}')
    gone = {i for i, _ in failed}
    return [it for it in items if it['id'] not in gone]


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff')


def folder_items(c, out_dir):
    """The pictures in a folder (and its subfolders), c.n of them (0: all) plus c.n_test, picked for the seed."""
    if not c.images or not os.path.isdir(c.images):
        raise UserError(f'--images={c.images!r} is not a folder; give the folder of your pictures')
    paths = sorted(os.path.relpath(os.path.join(root, name), c.images) for root, _, names in os.walk(c.images)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    items = [{'id': p, 'image': os.path.relpath(os.path.join(c.images, p), out_dir)} for p in paths]
    return pick(items, c, f'{c.images} has {len(items)} pictures')


def jsonl_records(c, out_dir):
    """Records of a JSONL the user has: each an "image" path (relative to that file, or absolute) and a "short"
    and/or "long" text, with whatever else it holds (a "scene") kept. Records without a readable image or a text are
    skipped, and said so; one without an "id" gets one no other record has."""
    records, root, skipped = [], os.path.dirname(os.path.abspath(c.path)), 0
    given = read_jsonl(c.path, unique_ids=True)
    taken = {str(r['id']) for r in given if 'id' in r}
    for i, r in enumerate(given):
        image = os.path.join(root, str(r.get('image', '')))
        texts = {s: ' '.join(r[s].split()) for s in STYLES if isinstance(r.get(s), str) and r[s].strip()}
        problem = 'has no "image"' if not r.get('image') else 'has no "short" or "long" text' if not texts else \
            verify_image(image)
        if problem:
            print(f'skipped record {i + 1}: {problem}')
            skipped += 1
            continue
        rid = str(r['id']) if 'id' in r else f'line-{i + 1}'
        while 'id' not in r and rid in taken:  # a record's own id wins; this one takes another
            rid += '+'
        taken.add(rid)
        records.append({**r, 'id': rid, 'image': os.path.relpath(image, out_dir), **texts})
    if skipped:
        print(f'skipped {skipped} records of {c.path} (said above)')
    return pick(records, c, f'{c.path} has {len(records)} usable records')


def pick(items, c, has):
    """c.n items (0: all) plus c.n_test, in a random order for the seed, split by assign_splits. has: '... has N
    pictures', said when there are too few."""
    if len(items) < c.n_test + 2:
        raise UserError(f'{has}; at least {c.n_test + 2} are needed with --n_test={c.n_test}')
    random.Random(c.seed).shuffle(items)
    return assign_splits(items[:c.n + c.n_test] if c.n else items, c.n_test)


OUTPUTS = ('train.jsonl', 'val.jsonl', 'test.jsonl', 'build.jsonl')  # what a build writes into its folder


def build(c, out_dir):
    """Build the dataset c.dataset into out_dir, resuming whatever an earlier run of the same command began. One
    build at a time holds the folder: a second is refused, so nothing is paid for twice."""
    written = {os.path.realpath(os.path.join(out_dir, f)) for f in OUTPUTS}
    if c.dataset == 'jsonl' and os.path.realpath(c.path) in written:
        raise UserError(f'--path={c.path} would be overwritten by the dataset written into {out_dir}; give another '
                        '--out, or rename the file')
    os.makedirs(out_dir, exist_ok=True)
    lock = hold(os.path.join(out_dir, 'build.lock'), out_dir, 'another build', 'build into another --out')
    try:
        if c.dataset == 'jsonl':
            items = jsonl_records(c, out_dir)
            return write_splits(out_dir, items, items)
        items = coco_items(c, out_dir) if c.dataset == 'coco' else folder_items(c, out_dir)
        if describe_all(items, out_dir, c):
            write_splits(out_dir, items, read_log(os.path.join(out_dir, 'build.jsonl'), check=build_log))
    finally:
        let_go(lock)


# -----------------------------------------------------------------------------

DEFAULTS = dict(
    dataset='coco',         # coco, folder or jsonl
    out='',                 # the dataset folder (default: data/DATASET)
    seed=1337,              # which images are picked and how they are split
    n=0,                    # images besides the test ones, split 90/10 into train and val as in the paper (0: 28000 for coco, all there are for folder and jsonl)
    n_test=25,              # held-out test images (the paper's 25)
    images='',              # folder: the folder of pictures
    path='',                # jsonl: the file of {"image", "short", "long"} records
    coco_url='https://images.cocodataset.org',  # coco: where the annotations and images are downloaded from
    with_image=False,       # coco: send the picture along with its five captions
    **chat.FLAGS,           # the chat model that writes the descriptions (chat.py)
)


def main(argv):
    c = SimpleNamespace(**parse_flags(DEFAULTS, argv, minimum={'n': 0, 'n_test': 0, **chat.MINIMUM},
                                      doc=__doc__, sources=['build', 'chat']))
    if c.dataset not in ('coco', 'folder', 'jsonl'):
        raise UserError(f'--dataset={c.dataset}: choose coco, folder or jsonl (python data.py draws the picture-book world)')
    if c.dataset == 'jsonl' and not c.path:
        raise UserError('--dataset=jsonl needs --path=FILE')
    build(c, c.out or f'data/{c.dataset}')


if __name__ == '__main__':
    run_cli(main)
