"""
Pictures of what the model sees and writes, drawn with Pillow alone (no plotting library):
  1. a sample sheet: pictures with the model's descriptions beneath them; for picture-book pictures every fact the
     text states is coloured by whether the picture bears it out (the grounding judge's reading, made visible);
  2. attention over the picture: for each word of a description, which patches of the image the decoder attended
     to while it wrote that word (for visual_tokens='cls' models: what the encoder's CLS token attended to);
  3. loss curves: the training and validation loss of each style, read from out_dir/train_log.jsonl.

    import pictures
    pictures.sample_sheet(images, texts, 'out-tiny/samples.png', scenes=scenes)     # scenes: picture-book only
    pictures.attention_picture(model, tokenizer, image, None, 'out-tiny/attention.png')  # None: describe it first
    pictures.loss_curves('out-tiny/train_log.jsonl', 'out-tiny/loss.png')

Every function writes one PNG and returns what it drew (counts, heatmaps, series), so tests can check the numbers;
attention_maps gives the attention's numbers alone (serve.py's live page draws them in the browser).
"""
import json
import math
import os
import re
from bisect import bisect_right

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import grade
import picturebook
from cli import UserError
from data import EOT, STYLE_TOKEN
from model import SelfAttention

PAPER, INK, GREY, RULE = (255, 255, 255), (25, 25, 25), (110, 110, 110), (225, 225, 225)
TRUE_RGB, FALSE_RGB = (0, 130, 0), (215, 0, 0)  # a fact the picture bears out, and one it does not
MARGIN, GAP = 12, 8


# -----------------------------------------------------------------------------
# Drawing helpers shared by the three pictures

def font(size=13):
    """Pillow's own font at size pixels (Pillow 10.1 and later scale it); older Pillow has one small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def line_height(f):
    return f.getbbox('Ag')[3] + 4


def wrap(text, f, width):
    """Greedy word wrap: (start, end) character spans of text, one a line, each at most width pixels wide (a word
    longer than that gets a line of its own). Spans, not strings, so that marks on characters survive wrapping."""
    lines, start, end = [], None, None
    for m in re.finditer(r'\S+', text):
        if start is not None and f.getlength(text[start:m.end()]) > width:
            lines.append((start, end))
            start = None
        start = m.start() if start is None else start
        end = m.end()
    return lines + ([(start, end)] if start is not None else [])


def draw_text(draw, xy, text, f, width, marks=None, fill=INK):
    """Draw text wrapped to width at xy and return the y below it. marks (one a character: 0 plain, 1 true, 2 false)
    colour the characters: true green, false red and underlined (so it still shows to a colour-blind reader)."""
    text = re.sub(r'\s', ' ', text)  # a newline inside a line would make Pillow measure two lines
    marks = np.zeros(len(text), np.int8) if marks is None else marks
    x0, y = xy
    h = line_height(f)
    for start, end in wrap(text, f, width):
        x, i = x0, start
        while i < end:  # one run of equally marked characters at a time
            j = i + 1
            while j < end and marks[j] == marks[i]:
                j += 1
            piece, mark = text[i:j], marks[i]
            draw.text((x, y), piece, fill=(fill, TRUE_RGB, FALSE_RGB)[mark], font=f)
            if mark == 2:
                draw.line([(x, y + h - 3), (x + f.getlength(piece), y + h - 3)], fill=FALSE_RGB, width=2)
            x, i = x + f.getlength(piece), j
        y += h
    return y


def text_height(text, f, width):
    return len(wrap(re.sub(r'\s', ' ', text), f, width)) * line_height(f)


def enlarge(image, px, exact=False):
    """A uint8 (H, W, 3) picture as a Pillow image: blown up a whole number of times with NEAREST to about px wide,
    so every pixel stays a sharp square (64 px -> 128), or to exactly px x px where exact (shrunk smoothly if big)."""
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if exact:
        return im.resize((px, px), Image.NEAREST if im.width <= px else Image.BILINEAR)
    k = max(1, px // im.width)
    return im.resize((im.width * k, im.height * k), Image.NEAREST)


def save(im, path):
    """Write a PNG, making its folder; a path that cannot be written is a UserError."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        im.save(path, format='PNG')
    except OSError as e:
        raise UserError(f'cannot write {path}: {e}')


# -----------------------------------------------------------------------------
# 1. The sample sheet: pictures, descriptions, and which facts are true

MARKED = ('object', 'size', 'count', 'sky', 'ground')  # the facts whose words the sheet can find in the text


def fact_spans(text):
    """Where the text states each fact of picturebook.facts(text) of a kind in MARKED: a list of (fact, (start, end)),
    the characters of the words that state it. A fact of another kind (one a student teaches picturebook.facts, say)
    still counts on the sheet, unmarked. Read the way picturebook.facts reads: within a clause, a colour word directly before a
    kind word names an object (marked on those two words); a size or number word just before gives its size or
    count (marked on that word alone, so 'two red balls' beside one red ball marks 'two' false and 'red balls'
    true); the sky and the ground are named by the cue phrases of SKY_WORDS and GROUND_WORDS."""
    out = []
    for clause in re.finditer(r'[^.!?;:,]+', text):  # the reader's clauses (a colour never names the next one's thing)
        words = [(w.group().lower(), clause.start() + w.start(), clause.start() + w.end())
                 for w in re.finditer(r'[a-z]+', clause.group(), re.I | re.A)]
        for i in range(len(words) - 1):
            (color, start, _), (kind, _, end) = words[i], words[i + 1]
            kind = picturebook.WORD_KIND.get(kind)
            if color in picturebook.COLORS and kind:
                out.append((('object', color, kind), (start, end)))
                before, b0, b1 = words[i - 1] if i else ('', 0, 0)
                if before in picturebook.OBJECT_SIZES:
                    out.append((('size', before, color, kind), (b0, b1)))
                if before in picturebook.NUMBER_WORDS:
                    out.append((('count', picturebook.NUMBER_WORDS[before], color, kind), (b0, b1)))
    # The reader finds cue phrases in the words joined by single spaces; map each match back to the words it covers.
    words = [(w.group().lower(), w.start(), w.end()) for w in re.finditer(r'[a-z]+', text, re.I | re.A)]
    starts = np.cumsum([0] + [len(w) + 1 for w, _, _ in words[:-1]]).tolist() if words else []
    flat = ' '.join(w for w, _, _ in words)
    for name, cues in [('sky', picturebook.SKY_WORDS), ('ground', picturebook.GROUND_WORDS)]:
        for value, phrases in cues.items():
            for phrase in phrases:
                for m in re.finditer(rf'\b{phrase}\b', flat):
                    first, last = bisect_right(starts, m.start()) - 1, bisect_right(starts, m.end() - 1) - 1
                    out.append(((name, value), (words[first][1], words[last][2])))
    return out


def fact_marks(text, scene):
    """Per character of text: 0 states nothing, 1 part of a true fact, 2 part of a false one (false wins); and the
    grounding judge's counts for it (grade.grounding_counts: true and stated facts, named and all objects)."""
    stated = picturebook.facts(text)
    marks = np.zeros(len(text), np.int8)
    for fact, (start, end) in fact_spans(text):
        if fact in stated:  # never mark what the judge did not read
            marks[start:end] = np.maximum(marks[start:end], 1 if picturebook.true_of(fact, scene) else 2)
    return marks, grade.grounding_counts(text, scene)


def grounding_line(counts):
    """The line under a picture-book description (sheet and live page): its precision and its recall."""
    return f"{counts['true']}/{counts['stated']} facts true, {counts['named']}/{counts['objects']} objects named"


def sample_sheet(images, texts, path, scenes=None, columns=4, title='', picture_px=128, text_px=240, size=13):
    """Write a PNG grid of pictures (uint8 (H, W, 3) arrays) with their descriptions wrapped beneath them. With
    scenes (picture-book; None for a picture without one) the words of each stated fact are green when the scene
    bears it out and red, underlined when it does not, each picture shows its grounding line (true facts of those
    stated, objects named of those in the picture), and the header the precision over the sheet. Returns
    [(true, stated)] per picture (None where there is no scene)."""
    scenes = [None] * len(images) if scenes is None else list(scenes)
    if not len(images) or not len(images) == len(texts) == len(scenes):
        raise ValueError(f'{len(images)} pictures, {len(texts)} texts, {len(scenes)} scenes: one of each, at least one')
    f, small = font(size), font(size - 1)
    pictures = [enlarge(im, picture_px) for im in images]
    marked = [fact_marks(t, s) if s is not None else (None, None) for t, s in zip(texts, scenes)]
    counts = [None if c is None else (c['true'], c['stated']) for _, c in marked]
    cell_w = max(max(p.width for p in pictures), text_px)
    cell_h = max(p.height for p in pictures) + line_height(small) + max(text_height(t, f, cell_w) for t in texts)
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    width = 2 * MARGIN + columns * cell_w + (columns - 1) * 2 * GAP
    header = title
    if any(c is not None for c in counts):
        true, stated = (sum(c[i] for c in counts if c is not None) for i in (0, 1))
        header += (' ' if title else '') + ('Green words state a fact the picture bears out, red underlined words '
                                            'a false one (as grade.py reads them). Precision over the sheet: '
                                            f'{true} of {stated} stated facts true'
                                            + (f' ({100 * true / stated:.0f}%).' if stated else '.'))
    header_h = text_height(header, f, width - 2 * MARGIN) + GAP if header else 0
    sheet = Image.new('RGB', (width, MARGIN * 2 + header_h + rows * cell_h + (rows - 1) * 2 * GAP), PAPER)
    draw = ImageDraw.Draw(sheet)
    if header:
        legend = np.zeros(len(header), np.int8)
        for word, mark in (('Green words', 1), ('red underlined words', 2)):
            at = header.find(word)
            legend[at:at + len(word) if at >= 0 else 0] = mark
        draw_text(draw, (MARGIN, MARGIN), header, f, width - 2 * MARGIN, legend)
    for n, (picture, text, (marks, count)) in enumerate(zip(pictures, texts, marked)):
        x = MARGIN + (n % columns) * (cell_w + 2 * GAP)
        y = MARGIN + header_h + (n // columns) * (cell_h + 2 * GAP)
        sheet.paste(picture, (x, y))
        y += picture.height
        if count is not None:
            whole = count['true'] == count['stated'] and count['named'] == count['objects']
            draw.text((x, y + 1), grounding_line(count), font=small, fill=GREY if whole else FALSE_RGB)
        draw_text(draw, (x, y + line_height(small)), text, f, cell_w, marks)
    save(sheet, path)
    return counts


# -----------------------------------------------------------------------------
# 2. Attention over the picture

def attention_weights(model, images, idx):
    """One forward pass over images (B, H, W, 3) uint8 and tokens idx (B, T) with the weights of every attention
    kept: returns (encoder, decoder), lists of one (B, nh, Tq, Tk) tensor per block. The attention is computed the
    long way for this pass only (SelfAttention.keep_weights); the model's output is the same as without."""
    attentions = [m for m in model.modules() if isinstance(m, SelfAttention)]
    for a in attentions:
        a.keep_weights = True
    try:
        with torch.no_grad():
            model(images, idx)
        return [b.attn.weights for b in model.encoder.blocks], [b.attn.weights for b in model.decoder]
    finally:
        for a in attentions:
            a.keep_weights, a.weights = False, None


def words_of(tokenizer, ids):
    """The words of a text given as token ids: [(word, [indices into ids])]. A token that starts with a space starts
    a word; any other token (the rest of a word split by BPE, a full stop) belongs to the word before it."""
    words = []
    for i, t in enumerate(ids):
        piece = tokenizer.decode([t])
        if not words or piece.startswith(' '):
            words.append(['', []])
        words[-1][0] += piece
        words[-1][1].append(i)
    return [(w.strip() or '?', where) for w, where in words]


RAMP = [(0.0, (25, 25, 95)), (0.4, (150, 30, 150)), (0.7, (240, 85, 40)), (1.0, (255, 245, 110))]


def ramp(v):
    """Colours of values v in [0, 1] (any shape) as uint8 (..., 3): dark blue, purple, orange, light yellow."""
    at = [s for s, _ in RAMP]
    return np.stack([np.interp(v, at, [c[i] for _, c in RAMP]) for i in range(3)], axis=-1).astype(np.uint8)


def overlay(image, heat, px, alpha=0.6):
    """The picture at px x px with heat (gh, gw) over it, each patch coloured by its share of the map's maximum."""
    base = np.asarray(enlarge(image, px, exact=True), dtype=np.float32)
    colour = Image.fromarray(ramp(heat / heat.max() if heat.max() > 0 else heat)).resize((px, px), Image.NEAREST)
    return Image.fromarray(((1 - alpha) * base + alpha * np.asarray(colour, np.float32)).astype(np.uint8))


def attention_picture(model, tokenizer, image, text, path, style='short', layer=None, columns=6, tile_px=96,
                      picture_px=128, size=13):
    """Write a PNG of what the model looked at in image (uint8 (S, S, 3)) while writing text (None: describe it
    first, greedily, as sample.describe does): attention_maps' heatmaps, one a word (or one for CLS), under the
    picture and the text. Returns (labels, maps): the words (or ['CLS']) and float64 maps (n, gh, gw), each summing
    to one over the image."""
    cfg = model.config
    text, labels, maps, shares, about = attention_maps(model, tokenizer, image, text, style, layer)
    tile_px = tile_px if cfg.visual_tokens == 'all' else max(tile_px, 2 * picture_px)  # one map: make it big
    draw_attention(path, np.asarray(image, dtype=np.uint8), text, about, labels, maps, shares, columns, tile_px,
                   picture_px, size)
    return labels, maps


def attention_maps(model, tokenizer, image, text, style='short', layer=None):
    """Where the model looked in image (uint8 (S, S, 3)) while writing text: a string, the token ids the model
    wrote (a list; encoding its text again may spell it otherwise), or None (describe it first, greedily).
    visual_tokens='all': one heatmap per word (pictures.words_of) over the image's patches (or merged squares of
    them, with merge); 'cls': one heatmap, what the encoder's CLS token (the decoder's only view of the image)
    attended to. layer: a decoder block, or None for the mean over all of them. Returns (text, labels, maps, shares,
    about): the words (or ['CLS']), float64 maps (n, gh, gw) each summing to one over the image, each map's share of
    its attention on the picture at all, and a sentence saying what the maps are."""
    cfg, device = model.config, next(model.parameters()).device
    image = np.asarray(image, dtype=np.uint8)
    if image.shape != (cfg.img_size, cfg.img_size, 3):
        raise UserError(f'the picture is {image.shape}; this model reads ({cfg.img_size}, {cfg.img_size}, 3)')
    if style is not None and style not in STYLE_TOKEN:
        raise UserError(f'--style={style}: use short or long')
    start_id = STYLE_TOKEN[style] if style else EOT  # None: a model trained with --style_token=false
    if layer is not None and not -cfg.n_layer <= layer < cfg.n_layer:
        raise UserError(f'layer {layer}: the decoder has {cfg.n_layer} blocks (0 to {cfg.n_layer - 1})')
    training = model.training
    model.eval()  # no dropout, and the connector's calibrated statistics
    try:
        images = torch.from_numpy(image[None].copy()).to(device)
        if text is None:  # greedily, as sample.describe would, but keeping the very tokens the model wrote: encoding
            # its text again may spell it otherwise (GPT-2 has several ways to write '....'), tokens it never wrote
            start = torch.tensor([[start_id]], device=device)
            ids = model.generate(images, start, cfg.block_size, temperature=0, eot=EOT)[0].tolist()
            ids = ids[:ids.index(EOT)] if EOT in ids else ids
        else:
            ids = list(text) if isinstance(text, list) else tokenizer.encode(text.strip())
        text = text if isinstance(text, str) else tokenizer.decode(ids)
        if len(ids) + 1 > cfg.block_size:
            raise UserError(f'the text is {len(ids)} tokens; this model reads at most {cfg.block_size - 1}')
        idx = torch.tensor([[start_id] + ids], device=device)
        encoder, decoder = attention_weights(model, images, idx)
    finally:
        model.train(training)
    grid, N = cfg.img_size // cfg.patch_size, (cfg.img_size // cfg.patch_size) ** 2
    if cfg.visual_tokens == 'cls':
        # The decoder sees one visual token, so where it looked in the picture is where CLS gathered from: the
        # CLS query of the encoder's last block (the one that writes what the connector takes), over the patches.
        on_patches = encoder[-1][0, :, 0, 1:].mean(0).double().cpu().numpy()  # (N,), mean over the heads
        labels, shares = ['CLS'], [on_patches.sum()]
        maps = (on_patches / on_patches.sum()).reshape(1, grid, grid)
        about = (f'The decoder sees this picture through one token, CLS. The map: what CLS attended to over the '
                 f'{N} patches in the last of the encoder\'s {cfg.enc_layer} blocks, mean over its {cfg.enc_head} '
                 f'heads, renormalised over the patches (it put {100 * shares[0]:.0f}% of its attention on them, '
                 f'the rest on itself).')
    else:
        # Mean over the layers by default: which layers read the picture differs from model to model, and the raw
        # weights are averaged before renormalising, so a layer (or head) that hardly looks at the picture counts
        # little. A word is written by the queries that predict its tokens: the position before each token.
        P, chosen = model.n_prefix, decoder if layer is None else [decoder[layer]]
        grid //= cfg.merge  # one cell of the map for each visual token: merge x merge patches
        first = P - grid * grid  # the tokens before those on the picture: CLS, where the prefix has it
        att = torch.stack(chosen).mean(0)[0].mean(0).double().cpu()  # (P+T, P+T), mean over layers and heads
        words = words_of(tokenizer, ids)
        rows = [att[[P + i for i in where]].mean(0) for _, where in words]  # ids[i] is predicted at P + i
        labels, shares = [w for w, _ in words], [float(r[first:P].sum()) for r in rows]
        maps = np.array([(r[first:P] / r[first:P].sum()).numpy().reshape(grid, grid) for r in rows]).reshape(-1, grid, grid)
        which = (f'all {cfg.n_layer} decoder layers (mean)' if layer is None else
                 f'decoder layer {layer % cfg.n_layer} alone (of 0 to {cfg.n_layer - 1})')
        about = (f'What the decoder attended to in the picture while writing each word ({style}): the attention of '
                 f'the queries that predicted the word\'s tokens on the {P - first} visual tokens ('
                 f'{cfg.merge * cfg.patch_size} px squares), mean over {cfg.n_head} heads, '
                 f'{which} and the word\'s tokens, renormalised over the picture (each map sums to 1). Under each '
                 f'map: the share of that attention on the picture at all (the rest went to the text'
                 + (' and CLS).' if first else ').'))
    return text, labels, maps, shares, about


def draw_attention(path, image, text, about, labels, maps, shares, columns, tile_px, picture_px, size):
    f, small = font(size), font(size - 1)
    columns = max(1, min(columns, len(labels)))
    width = max(2 * MARGIN + columns * tile_px + (columns - 1) * GAP, 540)  # 540: room for the colour ramp's legend
    picture = enlarge(image, picture_px)
    text_w = width - 2 * MARGIN - picture.width - 2 * GAP
    about_h = text_height(about, f, width - 2 * MARGIN) + GAP
    top_h = max(picture.height, text_height(text, f, text_w)) + 2 * GAP
    tile_h = tile_px + line_height(small) + GAP
    rows = math.ceil(len(labels) / columns)
    ramp_h = 14 + line_height(small)
    im = Image.new('RGB', (width, 2 * MARGIN + about_h + top_h + rows * tile_h + ramp_h), PAPER)
    draw = ImageDraw.Draw(im)
    y = draw_text(draw, (MARGIN, MARGIN), about, f, width - 2 * MARGIN) + GAP
    im.paste(picture, (MARGIN, y))
    draw_text(draw, (MARGIN + picture.width + 2 * GAP, y), text or '(no words)', f, text_w)
    y += top_h
    for n, (label, heat, share) in enumerate(zip(labels, maps, shares)):
        x, ty = MARGIN + (n % columns) * (tile_px + GAP), y + (n // columns) * tile_h
        im.paste(overlay(image, heat, tile_px), (x, ty))
        caption = f'{label} {100 * share:.0f}%'
        while small.getlength(caption) > tile_px and len(label) > 1:  # a long word is cut short, not its share
            label = label[:-1]
            caption = f'{label}~ {100 * share:.0f}%'
        draw.text((x, ty + tile_px + 1), caption, fill=INK, font=small)
    y += rows * tile_h
    bar = Image.fromarray(np.repeat(ramp(np.linspace(0, 1, 160))[None], 10, axis=0))
    im.paste(bar, (MARGIN, y))
    draw.text((MARGIN + 168, y - 2), 'low to high attention, each map scaled to its own maximum', fill=GREY, font=small)
    save(im, path)


# -----------------------------------------------------------------------------
# 3. Loss curves

SERIES = {'train/short': ((140, 180, 225), 1), 'train/long': ((250, 185, 130), 1),  # colour, line width
          'val/short': ((30, 90, 180), 3), 'val/long': ((215, 100, 0), 3)}


def loss_series(log_path):
    """The losses in train_log.jsonl: {'train/short': [(step, loss)], 'train/long': .., 'val/short': ..,
    'val/long': ..}, from the training lines {"step", "train": {"short": .., "long": ..}, ...} (each style's mean
    loss over the steps since the line before) and the validation losses of the
    evaluation lines {"step", "eval": {"val/short": ..}}; any other line (or a half-written one) is skipped."""
    if not os.path.exists(log_path):
        raise UserError(f'{log_path} does not exist: train.py writes it into out_dir as it trains')
    series = {name: [] for name in SERIES}
    with open(log_path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: a line nested too deeply to parse
                continue
            if not isinstance(r, dict) or not isinstance(r.get('step'), (int, float)):
                continue
            pairs = [(f'train/{style}', loss) for style, loss in r['train'].items()] if isinstance(r.get('train'), dict) else []
            if isinstance(r.get('eval'), dict):  # an evaluation: its train/ losses would blur the per-step curves
                pairs += [(name, loss) for name, loss in r['eval'].items() if name.startswith('val/')]
            for name, loss in pairs:
                if name in series and isinstance(loss, (int, float)) and math.isfinite(loss):
                    series[name].append((r['step'], float(loss)))
    series = {name: sorted(points) for name, points in series.items() if points}
    if not series:
        raise UserError(f'{log_path} has no loss lines to draw (yet): train.py writes one every log_interval steps')
    return series


def ticks(lo, hi, n=6):
    """Round numbers (1, 2 or 5 times a power of ten apart) from lo to hi, about n of them."""
    step = (hi - lo) / n
    step = min((m * 10 ** math.floor(math.log10(step)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - step))
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def number(v):
    return f'{v:.0f}' if v == round(v) and abs(v) < 1e7 else f'{v:.3g}'


def loss_curves(log_path, png_path, width=720, height=440, log_y=True, size=13):
    """Draw the training loss of each style (steps alternate styles, so each has its own line) and the validation
    loss of each style against the step, with axes, ticks and a legend (the last value of each line in it); the
    loss axis is logarithmic where log_y and every loss is positive. Returns the series drawn (see loss_series)."""
    series = loss_series(log_path)
    f, small = font(size), font(size - 1)
    points = [p for s in series.values() for p in s]
    log_y = log_y and all(loss > 0 for _, loss in points)
    scale = math.log10 if log_y else (lambda v: v)
    x0, x1 = min(s for s, _ in points), max(s for s, _ in points)
    y0, y1 = min(scale(v) for _, v in points), max(scale(v) for _, v in points)
    x0, x1 = (x0 - 1, x1 + 1) if x0 == x1 else (x0, x1)
    pad = 0.05 * (y1 - y0) or 0.1
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 64, width - 16, 28 + 2 * line_height(small), height - 44
    X = lambda s: left + (s - x0) / (x1 - x0) * (right - left)  # noqa: E731 (a step -> a pixel column)
    Y = lambda v: bottom - (scale(v) - y0) / (y1 - y0) * (bottom - top)  # noqa: E731 (a loss -> a pixel row)
    im = Image.new('RGB', (width, height), PAPER)
    draw = ImageDraw.Draw(im)
    draw.text((left, 8), f'loss per style: {log_path}' + (' (log scale)' if log_y else ''), fill=INK, font=f)
    if log_y:  # 1, 2, 5 times powers of ten; where the range is narrower than that, round numbers in between
        marks = [m * 10 ** k for k in range(math.floor(y0) - 1, math.ceil(y1) + 1) for m in (1, 2, 5)]
        marks = [v for v in marks if y0 <= math.log10(v) <= y1]
        marks = marks if len(marks) >= 3 else [v for v in ticks(10 ** y0, 10 ** y1) if v > 0]
    else:
        marks = ticks(y0, y1)
    for v in marks:
        draw.line([(left, Y(v)), (right, Y(v))], fill=RULE)
        label = number(v) if v >= 1 or not log_y else f'{v:.2g}'
        draw.text((left - 6 - small.getlength(label), Y(v) - 7), label, fill=GREY, font=small)
    for s in ticks(x0, x1):
        draw.line([(X(s), bottom), (X(s), bottom + 4)], fill=GREY)
        draw.text((X(s) - small.getlength(number(s)) / 2, bottom + 6), number(s), fill=GREY, font=small)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=INK)
    draw.text(((left + right) / 2 - f.getlength('step') / 2, height - 22), 'step', fill=INK, font=f)
    draw.text((8, top - line_height(small) - 4), 'loss', fill=INK, font=small)
    x = left
    for name, pts in series.items():
        colour, w = SERIES[name]
        xy = [(X(s), Y(v)) for s, v in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=w, joint='curve')
        if w > 1 or len(xy) == 1:  # evaluations are few: a dot on each
            for px, py in xy:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        entry = f'{name.replace("/", " ")} {pts[-1][1]:.3f}'
        draw.line([(x, 30 + 7), (x + 18, 30 + 7)], fill=colour, width=3)
        draw.text((x + 22, 30), entry, fill=INK, font=small)
        x += 30 + small.getlength(entry)
    save(im, png_path)
    return series
