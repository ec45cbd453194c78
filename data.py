"""
Datasets for nanovlms: the one format they all share, the tokenizer, and the arrays and batches training reads.

Every dataset is a folder with train.jsonl, val.jsonl and test.jsonl, one record per image:
    {"id": "...", "image": "images/00001.png", "short": "...", "long": "...", "scene": {...}}
with `image` a path relative to the folder, `short` a 20-25 word description (the paper's ShortDesc style) and
`long` a 60-70 word one (LongDesc). `scene` is optional: the picture-book world records the truth of each picture
so that a description can be checked exactly. Test records also carry "prompts": the beginnings of their two
descriptions (6-7 and 18-20 words) that the paper's completion task gives a model to go on from.

This file holds, in the order data flows:
  1. the format: JSONL records and the pictures they point at, read and written in one place;
  2. the picture-book world (picturebook.py) written out as such a folder, offline and free;
  3. the tokenizer: GPT-2's BPE (tiktoken r50k_base), compacted to the tokens the training text uses;
  4. preparation: images and texts turned into numpy arrays once, so a training step never decodes an image;
  5. batches: random slices of those arrays, as tensors on the training device.
A model's tokens become a description the other way in sample.py (describe).
Datasets from photos (COCO, a folder, your own JSONL) are built by build.py into the same format.

    python data.py                                  # the picture-book world in data/picturebook, prepared at 64 px
    python data.py --img_size=224 --out=data/picturebook224    # at the paper's image size, for --size=mini and up
"""
import contextlib
import functools
import itertools
import json
import multiprocessing
import os
import random
import signal
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

import picturebook
from cli import UserError, loads, parse_flags, run_cli, temporary, worker_pool, write_failed, write_file
from picturebook import STYLES

# Pillow refuses a picture over twice its pixel limit and reads one over the limit with a warning; open_image refuses
# both, so the warning would only repeat what the error says.
warnings.simplefilter('ignore', Image.DecompressionBombWarning)

BEGINNINGS = {'short': (6, 7), 'long': (18, 20)}  # words of a test description given to the model to complete
PICTUREBOOK_DIR = 'data/picturebook'  # where train.py draws the picture-book world when it is missing

# -----------------------------------------------------------------------------
# 1. The format: JSONL records and their pictures

def read_jsonl(path, unique_ids=False):
    """The records of a JSONL file: one JSON object a line, blank lines allowed, UTF-8 with or without a byte-order
    mark (as Windows editors save it). A line that is not UTF-8, not JSON or not an object is a UserError naming
    it; so, with unique_ids, is a record with an earlier record's "id" (one of the two would be lost)."""
    if not os.path.exists(path):
        raise UserError(f'{path} does not exist')
    try:
        with open(path, 'rb') as f:
            lines = list(f)
    except OSError as e:
        raise UserError(f'cannot read {path}: {e.strerror or e}')
    return parse_jsonl(path, lines, unique_ids)


def parse_jsonl(path, lines, unique_ids=False):
    """The records of the lines (bytes) of the JSONL file path, as read_jsonl says."""
    records, line_of = [], {}
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.decode('utf-8-sig' if n == 1 else 'utf-8')
        except UnicodeDecodeError:
            raise UserError(f'{path}:{n} is not UTF-8 text; save the file as UTF-8') from None
        if not line.strip():
            continue
        try:
            record = loads(line)
        except ValueError as e:  # json.JSONDecodeError is one
            raise UserError(f'{path}:{n} is not valid JSON' + (f': {e}' if 'deeply' in str(e) else '')) from None
        if not isinstance(record, dict):
            raise UserError(f'{path}:{n} is not a JSON object {{...}}; every line must be one record')
        if unique_ids and 'id' in record:
            first = line_of.setdefault(str(record['id']), n)
            if first != n:
                raise UserError(f'{path}:{n} has the same id as line {first} ({record["id"]!r}); '
                                'give every record its own id')
        records.append(record)
    return records


def write_jsonl(path, records, kept=None):
    """Write all records to path atomically (write_file)."""
    write_file(path, lambda f: f.writelines(json.dumps(r) + '\n' for r in records), kept)


def append_jsonl(path, records, kept):
    """Append records to path as whole lines, on disk (fsync) before this returns, so a run stopped at any moment
    keeps everything appended before. A line a full disk cut short is taken back: the file always ends on a whole
    line. kept: what to say was kept if the write fails."""
    text = ''.join(json.dumps(r) + '\n' for r in records)
    with contextlib.suppress(OSError), open(path, 'rb') as f:
        if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b'\n':
            text = '\n' + text  # a file whose last record has no newline (read_log kept it): ours starts a line
    lines = memoryview(text.encode())
    try:
        with open(path, 'ab', buffering=0) as f:  # unbuffered: nothing is left over to fail again on close
            start = f.tell()
            try:
                while lines:  # one write may be cut short; the next then says why
                    lines = lines[f.write(lines):]
                os.fsync(f.fileno())
            except OSError:
                f.truncate(start)
                raise
    except OSError as e:
        raise write_failed(e, path, kept) from None


def read_log(path, check=None):
    """The records of a log appended to as work is done (append_jsonl: chat.run_jobs, sample.py, train.py), read and
    checked whole before anything in it is touched: a file that is not a JSONL of objects, or whose records
    check(records) refuses (a UserError), is refused as it is. A last line without a newline is kept when it is a
    record; when it is the start of one (a line cut short by a killed run) it is removed, once the rest has passed, so
    that the next append starts on a line of its own; when it is anything else, the file is refused as it is."""
    if not os.path.exists(path):
        return []
    if not os.path.isfile(path):
        raise UserError(f'{path} is not a file')
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f'cannot read {path}: {e.strerror or e}')
    whole = raw[:raw.rfind(b'\n') + 1]
    lines = whole.splitlines(keepends=True)
    cut = b''
    if len(whole) < len(raw):
        try:
            parse_jsonl(path, [raw[len(whole):]])
            lines.append(raw[len(whole):])  # a whole record, only without its newline
        except UserError:
            cut = raw[len(whole):]
    records = parse_jsonl(path, lines)
    if check:
        check(records)
    if cut:
        if not cut.startswith(b'{"'):  # not the start of a record we write: the file is something else
            raise UserError(f'{path} is not a JSONL file of records (its last line is neither a record nor the start '
                            'of one); give another file')
        with open(path, 'r+b') as f:
            f.truncate(len(whole))
    return records


def add_beginnings(record):
    """A test record with "prompts": the first 6-7 words of its short and 18-20 words of its long description, for
    the paper's completion task. How many words is drawn from the record's id, so it is the same on every run."""
    rng = random.Random(record['id'])
    return record | {'prompts': {s: ' '.join(record[s].split()[:rng.randint(*BEGINNINGS[s])])
                                 for s in STYLES if record.get(s)}}


def open_image(path, name=None):
    """An image file as an RGB Pillow image, read whole and upright (a phone photo's EXIF orientation applied), a
    transparent background white. A missing, unreadable or too large file (over Pillow's pixel limit, which stops a
    decompression bomb from filling memory) is a UserError naming it. path may be a file object instead (an upload's
    bytes in io.BytesIO), then called name in the messages."""
    name = path if name is None else name
    if isinstance(path, str) and not os.path.exists(path):
        raise UserError(f'image {path} does not exist')
    try:
        with Image.open(path) as file:  # reads the header only
            if Image.MAX_IMAGE_PIXELS and file.width * file.height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f'{file.width} x {file.height} pixels is over the limit of '
                                                   f'{Image.MAX_IMAGE_PIXELS:,}: it could be a decompression bomb')
            im = ImageOps.exif_transpose(file)  # a copy, read whole
        if im.mode.startswith('I'):  # 16 bits a pixel (a scientific or medical PNG): the top 8 are what a viewer shows
            im = Image.fromarray((np.asarray(im, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8))
        if im.has_transparency_data:  # as a viewer shows it, not in the colour the hidden pixels happen to hold
            im = Image.alpha_composite(Image.new('RGBA', im.size, 'white'), im.convert('RGBA'))
        return im.convert('RGB')
    except Exception as e:  # a damaged file makes Pillow's decoders raise errors of many kinds
        raise UserError(f'cannot read image {name}: {e or type(e).__name__}') from None


def load_image(path, size, name=None):
    """An image file (or file object, as open_image) as a (size, size, 3) uint8 array; a missing or unreadable file
    is a UserError."""
    im = open_image(path, name)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


# -----------------------------------------------------------------------------
# 2. The picture-book world as a dataset folder: PNGs in images/, one JSONL per split

def make_picturebook(out_dir, n_train=12000, n_val=500, n_test=500, img_size=64, seed=1337, meanwhile=None):
    """Draw and describe n_train + n_val + n_test scenes into out_dir. Deterministic for a seed; a scene in val or
    test never occurs in train (test is drawn first, then val, then train). One random sequence writes the text, in
    order, in a process of its own (written_pages) while the pool's processes draw the pictures, and this process
    does meanwhile() (its own work, if any). Returns for prepare() {split: (its records, their pixels as bytes)} (no
    pixels over 64 px: gigabytes), or None if out_dir had a dataset."""
    if os.path.exists(os.path.join(out_dir, 'train.jsonl')):
        print(f'{out_dir} already has a dataset; using it (delete the folder to draw a new one)')
        return None
    os.makedirs(os.path.join(out_dir, 'images'), exist_ok=True)
    drawn = {split: ([], []) for split in ('test', 'val', 'train')}
    with written_pages([('test', n_test), ('val', n_val), ('train', n_train)], seed) as pages, worker_pool() as pool:
        pictures = pool.imap(draw_page, ((p, img_size, out_dir) for p in pages), 128)
        if meanwhile:
            meanwhile()
        for (split, i, scene, short, long), pixels in pictures:
            rid = f'{split}-{i:05d}'
            if split != 'test':  # split into GPT-2's tokens now, while the text is still being written: prepare() finds
                gpt2_tokens(short), gpt2_tokens(long)  # them remembered
            record = {'id': rid, 'image': f'images/{rid}.png', 'short': short, 'long': long, 'scene': scene}
            drawn[split][0].append(add_beginnings(record) if split == 'test' else record)
            drawn[split][1].extend([pixels] if img_size <= 64 else [])
    for split, (records, _) in drawn.items():
        write_jsonl(os.path.join(out_dir, f'{split}.jsonl'), records)
    print(f'wrote {n_train}/{n_val}/{n_test} train/val/test picture-book scenes to {out_dir}')
    return drawn


@contextlib.contextmanager
def written_pages(counts, seed):
    """picturebook.pages, written by a process of their own and received here as they come: the text is one random
    sequence, so one core writes it all while the others draw the pictures."""
    received, send = multiprocessing.Pipe(duplex=False)
    writer = multiprocessing.Process(target=write_pages, args=(send, counts, seed), daemon=True)
    writer.start()
    send.close()  # the writer's end, closed here: once the writer is gone, receiving says so (EOFError)
    try:
        yield (page for hundred in iter(received.recv, None) for page in hundred)
    finally:
        writer.terminate()  # done, or stopped early (an error, Ctrl-C): either way gone, and reaped, before training
        writer.join()


def write_pages(send, counts, seed):
    """The writer's work: the pages, a hundred to a message (a message a page, the two processes wait on each other)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to answer
    pages = picturebook.pages(counts, seed)
    while hundred := list(itertools.islice(pages, 100)):
        send.send(hundred)
    send.send(None)


def draw_page(task):
    """A task of make_picturebook's pool (its processes ignore Ctrl-C): a page's picture saved; its pixels' bytes."""
    (split, i, scene, _, _), size, out_dir = task
    path, image = os.path.join(out_dir, f'images/{split}-{i:05d}.png'), picturebook.draw_scene(scene, size)
    try:
        image.save(path)
    except OSError as e:
        raise write_failed(e, path, 'nothing that matters: a rerun draws the same scenes from the seed', [path]) from None
    return task[0], image.tobytes()  # (S, S, 3) uint8, row by row, as np.asarray(image).tobytes() has them


# -----------------------------------------------------------------------------
# 3. The tokenizer: GPT-2's BPE with a compact vocabulary
#
# GPT-2's 50,257 embedding rows would dwarf a 5M-parameter model, and a child's vocabulary uses a few hundred of
# them. So token ids are renumbered: a handful of special tokens first, then only the GPT-2 ids that occur in the
# training text. Any other GPT-2 id (a word the model never saw) becomes <|unk|>.

SPECIALS = ['<|pad|>', '<|endoftext|>', '<|unk|>', '<|short|>', '<|long|>']  # style tokens start every text
PAD, EOT, UNK = 0, 1, 2
STYLE_TOKEN = {'short': 3, 'long': 4}


def gpt2_encoding():
    import requests
    import tiktoken  # imported here so that drawing scenes needs no tokenizer files
    try:
        return tiktoken.get_encoding('r50k_base')
    except (requests.RequestException, OSError) as e:  # the first use downloads it (1.6 MB), then it is cached
        raise UserError(f"could not fetch GPT-2's tokenizer (tiktoken r50k_base): {type(e).__name__}; connect once, "
                        "or point TIKTOKEN_CACHE_DIR at a folder that holds it") from None


@functools.lru_cache(maxsize=1 << 16)
def gpt2_tokens(text):
    """GPT-2's BPE of a text, remembered: preparing splits each training text twice (to fit the vocabulary, then to
    encode it), and make_picturebook splits them before, while the text is written."""
    return tuple(gpt2_encoding().encode_ordinary(text))


class Tokenizer:
    def __init__(self, gpt2_ids):
        self.gpt2_ids = list(gpt2_ids)  # compact id len(SPECIALS) + i  <->  GPT-2 id gpt2_ids[i]
        self.to_compact = {g: i + len(SPECIALS) for i, g in enumerate(self.gpt2_ids)}
        self.bpe = gpt2_encoding()

    @classmethod
    def fit(cls, texts):
        return cls(sorted({t for text in texts for t in gpt2_tokens(text)}))

    def __len__(self):
        return len(SPECIALS) + len(self.gpt2_ids)

    def encode(self, text):
        return [self.to_compact.get(t, UNK) for t in gpt2_tokens(text)]

    def decode(self, ids):
        """Text of the ids up to the first end-of-text; special tokens other than <|unk|> are dropped."""
        out = []
        for i in ids:
            if i == EOT:
                break
            if i >= len(SPECIALS):
                out.append(self.gpt2_ids[i - len(SPECIALS)])
            elif i == UNK:
                out.extend(self.bpe.encode_ordinary(' <unk>'))
        return self.bpe.decode(out)

    def state(self):
        return {'specials': SPECIALS, 'gpt2_ids': self.gpt2_ids}

    @classmethod
    def from_state(cls, state):
        if state['specials'] != SPECIALS:
            raise UserError('this checkpoint was made with other special tokens; retrain it with this version')
        return cls(state['gpt2_ids'])


# -----------------------------------------------------------------------------
# 4. Preparation: every split as arrays the training loop can slice without decoding anything
#
#   {split}.images{S}.npy  uint8 (N, S, S, 3)      the pictures at the model's image size S
#   {split}.tokens.npy     uint16 (N, 2, T)        per record, the short and the long text as
#                                                  [<|short|> or <|long|>] text tokens [<|endoftext|>] [<|pad|> ...]
#   vocab.json             the tokenizer, fitted on the training texts


def prepared_paths(data_dir, split, img_size):
    return os.path.join(data_dir, f'{split}.images{img_size}.npy'), os.path.join(data_dir, f'{split}.tokens.npy')


def prepare(data_dir, img_size, splits=('train', 'val'), drawn=None):
    """Turn each split's JSONL and images into arrays, or check the arrays an earlier run made against the JSONL.
    drawn: make_picturebook's records and pixels (at img_size), used instead of reading them back. Returns the
    tokenizer."""
    drawn = drawn or {}
    records_of = lambda split: drawn[split][0] if split in drawn else read_jsonl(os.path.join(data_dir, f'{split}.jsonl'))
    tok = vocabulary(data_dir, records_of)
    for split in splits:
        records = records_of(split)
        if not records:
            raise UserError(f'{data_dir}/{split}.jsonl has no records')
        images_path, tokens_path = prepared_paths(data_dir, split, img_size)
        if os.path.exists(images_path) and os.path.exists(tokens_path):
            load_prepared(data_dir, split, img_size, len(records), len(tok))  # a damaged or stale array is refused
            continue
        texts = [[[STYLE_TOKEN[s]] + tok.encode(r[s]) + [EOT] if r.get(s) else [] for s in STYLES] for r in records]
        T = max(len(t) for pair in texts for t in pair)
        tokens = np.full((len(records), 2, T), PAD, dtype=np.uint16)
        for i, pair in enumerate(texts):
            for j, t in enumerate(pair):
                tokens[i, j, :len(t)] = t
        partial = [temporary(images_path, '.tmp.npy'), temporary(tokens_path, '.tmp.npy')]
        try:
            # A picture at a time into a plain file, not a memory map: on a full disk a write says so, where a memory
            # map would kill the process with SIGBUS.
            with open(partial[0], 'wb') as f:
                np.lib.format.write_array_header_1_0(f, {'descr': '|u1', 'fortran_order': False,
                                                         'shape': (len(records), img_size, img_size, 3)})
                f.writelines(drawn.get(split, ([], []))[1] or  # as drawn, else read back from the PNGs
                             (load_image(os.path.join(data_dir, r['image']), img_size).tobytes() for r in records))
            np.save(partial[1], tokens)
            os.replace(partial[1], tokens_path)
            os.replace(partial[0], images_path)
        except BaseException as e:  # a full disk, an unreadable picture or Ctrl-C: no half-made array is left
            for path in partial:
                with contextlib.suppress(OSError):
                    os.remove(path)
            if isinstance(e, OSError):
                raise write_failed(e, f'the prepared {split} arrays in {data_dir}',
                                   'the dataset; they are prepared on the next run') from None
            raise
        print(f'prepared {split}: {len(records)} images at {img_size}px, texts up to {T} tokens, vocab {len(tok)}')
    return tok


def vocabulary(data_dir, records_of):
    """The tokenizer of data_dir/vocab.json, fitted on the training texts (records_of('train')) and written there
    the first time."""
    path = os.path.join(data_dir, 'vocab.json')
    if os.path.exists(path):
        try:
            with open(path) as f:
                return Tokenizer.from_state(loads(f.read()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f'{path} is damaged ({e}); delete it and the .npy files beside it, and run again to prepare '
                            'them again (a checkpoint made with the old vocabulary cannot resume on the new one)')
    tok = Tokenizer.fit(r[s] for r in records_of('train') for s in STYLES if r.get(s))
    write_file(path, lambda f: json.dump(tok.state(), f), 'the dataset; the vocabulary is made again on the next run')
    return tok


def load_prepared(data_dir, split, img_size, n=None, vocab_size=None):
    """A split's prepared arrays, the images memory-mapped, checked for what a damaged or out-of-date file shows: an
    unreadable array, the wrong type or shape, and (where given) a record count other than the JSONL's n or a token
    id outside the vocabulary. Either is a UserError that says to prepare them again."""
    images_path, tokens_path = prepared_paths(data_dir, split, img_size)
    again = f'delete {images_path} and {tokens_path}, and run again to prepare them again'
    try:
        images, tokens = np.load(images_path, mmap_mode='r'), np.load(tokens_path)
    except Exception:  # whatever np.load makes of damaged bytes: ValueError, OSError, EOFError, an unpickling error
        raise UserError(f'the prepared {split} arrays in {data_dir} are damaged (numpy cannot read them); {again}') from None
    what = (f'the pictures are not uint8 (N, {img_size}, {img_size}, 3)'
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (img_size, img_size, 3) else
            'the texts are not uint16 (N, 2, T)' if tokens.dtype != np.uint16 or tokens.ndim != 3 or tokens.shape[1] != 2 else
            f'{len(images)} pictures but {len(tokens)} texts' if len(images) != len(tokens) else
            f'{len(images)} records where {split}.jsonl has {n}' if n is not None and len(images) != n else
            'token ids beyond the vocabulary' if vocab_size is not None and tokens.size and tokens.max() >= vocab_size else '')
    if what:
        raise UserError(f'the prepared {split} arrays in {data_dir} are damaged or out of date ({what}); {again}')
    return images, tokens


def ensure_dataset(data_dir, img_size, meanwhile=None):
    """Draw the picture-book world if it is the dataset asked for and is missing (meanwhile: make_picturebook's),
    then prepare the arrays."""
    if not os.path.exists(os.path.join(data_dir, 'train.jsonl')):
        if os.path.normpath(data_dir) != os.path.normpath(PICTUREBOOK_DIR):
            raise UserError(f'no dataset in {data_dir} (train.jsonl missing); draw one with data.py or build one with build.py')
        print(f'drawing the picture-book dataset into {data_dir} (once)')
        return prepare(data_dir, img_size, drawn=make_picturebook(data_dir, img_size=img_size, meanwhile=meanwhile))
    return prepare(data_dir, img_size)


# -----------------------------------------------------------------------------
# 5. Batches: prepared arrays, sliced without decoding a single image

class Split:
    """One split's images (N, S, S, 3) uint8, memory-mapped, and texts (N, 2, T) uint16, loaded whole."""

    def __init__(self, data_dir, split, img_size, style_token=True):
        self.style_token = style_token  # False: every text starts with <|endoftext|> instead, whatever its style
        self.images, self.tokens = load_prepared(data_dir, split, img_size)
        self.has_style = [np.flatnonzero(self.tokens[:, s, 0] != PAD) for s in range(2)]  # records with that text

    def batch(self, style, batch_size, rng, device, rank=0, world=1):
        """Random images and their texts in one style: images (B, S, S, 3) uint8, x and y (B, L-1) with y = x
        shifted by one and -1 where there is no next token; L is the longest text in the batch (style and
        end-of-text tokens included), not the longest overall. Under DDP every process draws the same global batch
        of world * B and reads only its own part of it."""
        s = STYLES.index(style)
        ix = np.sort(rng.choice(self.has_style[s], size=batch_size * world))  # sorted: the memmap reads forward
        ix = ix[rank * batch_size:(rank + 1) * batch_size]
        toks = self.tokens[ix, s].astype(np.int64)  # (B, T)
        L = int((toks != PAD).sum(1).max())
        x, y = toks[:, :L - 1], toks[:, 1:L].copy()  # (B, L-1) each
        y[y == PAD] = -1
        if not self.style_token:
            x[:, 0] = EOT
        images = torch.from_numpy(self.images[ix])
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if device.type == 'cuda':  # pinned memory lets the copy overlap with compute
            return tuple(t.pin_memory().to(device, non_blocking=True) for t in (images, x, y))
        return images.to(device), x.to(device), y.to(device)


# -----------------------------------------------------------------------------

DEFAULTS = dict(
    out=PICTUREBOOK_DIR,    # the dataset folder to draw into
    n_train=12000,          # training scenes
    n_val=500,              # validation scenes
    n_test=500,             # held-out test scenes
    img_size=64,            # the pictures' size in pixels (and the size the arrays are prepared at)
    seed=1337,              # which scenes are drawn and which words describe them
)


def main(argv):
    c = parse_flags(DEFAULTS, argv, minimum={'n_train': 0, 'n_val': 0, 'n_test': 0, 'img_size': 1},
                    doc=__doc__, sources=['data'])
    prepare(c['out'], c['img_size'], drawn=make_picturebook(c['out'], c['n_train'], c['n_val'], c['n_test'],
                                                                c['img_size'], c['seed']))


if __name__ == '__main__':
    run_cli(main)
