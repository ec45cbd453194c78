"""
Datasets for nanovlms, and the one format they all share.

Every dataset is a folder with train.jsonl, val.jsonl and test.jsonl, one record per image:
    {"id": "...", "image": "images/00001.png", "short": "...", "long": "...", "scene": {...}}
with `image` a path relative to the folder, `short` a 20-25 word description (the paper's ShortDesc style) and
`long` a 60-70 word one (LongDesc). `scene` is optional: the picture-book world records the truth of each picture
so that a description can be checked exactly. Test records also carry "prompts": the beginnings of their two
descriptions (6-7 and 18-20 words) that the paper's completion task gives a model to go on from.

This file holds, in order:
  1. the picture-book world: scenes drawn with Pillow and described in a young child's words, offline and free;
  2. datasets from photos: COCO or a folder of pictures described by GPT-4o (or any OpenAI-compatible server),
     as the paper built its ShortDesc and LongDesc; or a JSONL of texts a user already has;
  3. the tokenizer: GPT-2's BPE (tiktoken r50k_base), compacted to the tokens the training text uses;
  4. preparation: images and texts turned into numpy arrays once, so a training step never decodes an image.

    python data.py                                         # the picture-book world in data/picturebook
    python data.py --n_train=20000 --img_size=224
    python data.py --dataset=coco --n=28000                # the paper's datasets (GPT-4o, OPENAI_API_KEY)
    python data.py --dataset=folder --images=~/photos --base_url=http://localhost:8000/v1 --model=qwen2.5-vl
    python data.py --dataset=jsonl --path=mine.jsonl       # {"image": "a.jpg", "short": "...", "long": "..."}
"""
import base64
import datetime
import email.utils
import io
import json
import os
import random
import re
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from types import SimpleNamespace

import numpy as np
import requests
from PIL import Image, ImageDraw

from model import UserError, parse_flags, run_cli

STYLES = ['short', 'long']  # the paper's ShortDesc and LongDesc
LENGTHS = {'short': (20, 25, 2, 3), 'long': (60, 70, 5, 6)}  # words from-to, sentences from-to
BEGINNINGS = {'short': (6, 7), 'long': (18, 20)}  # words of a test description given to the model to complete

# -----------------------------------------------------------------------------
# 1. The picture-book world
#
# A scene is a sky, a ground and 1-4 objects a young child knows, each with a colour, a size and a place. The
# picture is drawn from the scene and the descriptions are written from it, so every claim in them is true.

COLORS = {  # colour word -> RGB; distinct enough to tell apart at 64x64
    'red': (220, 30, 30), 'orange': (255, 140, 0), 'yellow': (250, 220, 30), 'green': (40, 170, 50),
    'blue': (30, 80, 230), 'purple': (140, 50, 190), 'pink': (255, 120, 190), 'brown': (130, 80, 35),
    'white': (250, 250, 250), 'black': (20, 20, 20),
}
SKY_KINDS = ['balloon', 'bird', 'kite']  # things that float or fly: drawn in the sky
GROUND_KINDS = ['ball', 'car', 'cat', 'dog', 'flower', 'house', 'tree', 'umbrella']
KINDS = sorted(SKY_KINDS + GROUND_KINDS)
KIND_COLORS = {'tree': ['green', 'orange', 'yellow', 'pink']}  # trees come in leaf colours; the rest in any colour
PLURALS = {kind: kind + 's' for kind in KINDS}
SIZES = ['small', 'big']
PLACES = ['left', 'middle', 'right']  # which third of the picture, left to right
SKIES = ['sunny', 'cloudy', 'night', 'sunset']
GROUNDS = ['grass', 'sand', 'snow']
SKY_RGB = {'sunny': (135, 200, 250), 'cloudy': (165, 175, 190), 'night': (20, 25, 70), 'sunset': (250, 165, 120)}
GROUND_RGB = {'grass': (100, 185, 80), 'sand': (225, 200, 140), 'snow': (238, 242, 248)}
NUMBERS = {1: 'one', 2: 'two', 3: 'three', 4: 'four'}


def random_scene(rng):
    """A random scene: sky, ground and 1-4 objects in distinct slots (a place in the sky or on the ground)."""
    n = rng.choices([1, 2, 3, 4], weights=[4, 3, 2, 1])[0]  # busy pictures are rarer, as in a picture book
    slots = [(row, place) for row in ('sky', 'ground') for place in PLACES]
    rng.shuffle(slots)
    objects = []
    for row, place in slots:
        if len(objects) == n:
            break
        if objects and rng.random() < 0.15:  # sometimes a twin of an earlier object, so counts come up ("two red balls")
            twin = rng.choice(objects)
            if sum(o['kind'] == twin['kind'] and o['color'] == twin['color'] for o in objects) > 1:
                continue  # twins, never triplets
            kind, color = twin['kind'], twin['color']
            if (kind in SKY_KINDS) != (row == 'sky'):
                continue
        else:
            kind = rng.choice(SKY_KINDS if row == 'sky' else GROUND_KINDS)
            color = rng.choice(KIND_COLORS.get(kind, list(COLORS)))
        objects.append({'kind': kind, 'color': color, 'size': rng.choice(SIZES), 'where': place})
    objects.sort(key=lambda o: (PLACES.index(o['where']), o['kind'] in GROUND_KINDS))  # left to right, sky first
    return {'sky': rng.choice(SKIES), 'ground': rng.choice(GROUNDS), 'objects': objects}


def scene_key(scene):
    """Scenes with the same key are the same picture: used to keep test and val scenes out of train."""
    return json.dumps(scene, sort_keys=True)


# Drawing. Coordinates are in a 64x64 design space scaled to the image size; every object has a dark outline, as
# in a picture book, so a green ball on green grass is still a ball.

def draw_scene(scene, size=64):
    img = Image.new('RGB', (size, size), SKY_RGB[scene['sky']])
    d = ImageDraw.Draw(img)
    u = size / 64
    horizon = 36 * u
    d.rectangle([0, horizon, size, size], fill=GROUND_RGB[scene['ground']])
    sky = scene['sky']
    if sky == 'sunny':
        d.ellipse([56 * u, -6 * u, 70 * u, 8 * u], fill=(255, 230, 60))
    elif sky == 'cloudy':
        for x, y in [(6, 3), (40, 1), (24, 28)]:
            d.ellipse([x * u, y * u, (x + 16) * u, (y + 6) * u], fill=(235, 238, 242))
    elif sky == 'night':
        d.ellipse([54 * u, 1 * u, 62 * u, 9 * u], fill=(245, 240, 190))
        for x, y in [(4, 3), (22, 6), (36, 2), (46, 29), (8, 30), (28, 31)]:
            d.rectangle([x * u, y * u, (x + 1) * u, (y + 1) * u], fill=(255, 255, 220))
    elif sky == 'sunset':
        d.rectangle([0, 28 * u, size, horizon], fill=(245, 120, 90))
        d.ellipse([26 * u, 30 * u, 38 * u, 42 * u], fill=(255, 210, 90))
        d.rectangle([0, horizon, size, size], fill=GROUND_RGB[scene['ground']])
    for o in scene['objects']:
        cx = (11 + 21 * PLACES.index(o['where'])) * u
        h = (24 if o['size'] == 'big' else 16) * u
        base = 14 * u + h / 2 if o['kind'] in SKY_KINDS else 60 * u  # sky things centred at y=14, the rest stand at y=60
        DRAW[o['kind']](d, cx, base, h, COLORS[o['color']], max(1, round(u)))
    return img


def _line(color):
    return (120, 120, 120) if color == COLORS['black'] else (30, 30, 30)


def _darker(color, f=0.6):
    return tuple(int(c * f) for c in color)


def draw_ball(d, cx, by, h, c, w):
    d.ellipse([cx - h / 2, by - h, cx + h / 2, by], fill=c, outline=_line(c), width=w)
    d.arc([cx - h / 2, by - h * 0.8, cx + h / 2, by - h * 0.2], 200, 340, fill=_line(c), width=w)


def draw_balloon(d, cx, by, h, c, w):
    d.line([cx, by - h * 0.15, cx + h * 0.1, by + h * 0.35], fill=_line(c), width=w)
    d.ellipse([cx - h * 0.35, by - h, cx + h * 0.35, by - h * 0.15], fill=c, outline=_line(c), width=w)


def draw_bird(d, cx, by, h, c, w):
    y = by - h / 2
    d.ellipse([cx - h / 2, y - h * 0.2, cx + h * 0.3, y + h * 0.2], fill=c, outline=_line(c), width=w)
    d.ellipse([cx + h * 0.1, y - h * 0.4, cx + h * 0.45, y - h * 0.05], fill=c, outline=_line(c), width=w)
    d.polygon([(cx + h * 0.42, y - h * 0.28), (cx + h * 0.6, y - h * 0.2), (cx + h * 0.42, y - h * 0.13)],
              fill=(255, 170, 0), outline=_line(c))
    d.polygon([(cx - h * 0.3, y), (cx - h * 0.05, y - h * 0.55), (cx + h * 0.05, y)], fill=c, outline=_line(c))


def draw_car(d, cx, by, h, c, w):
    d.rectangle([cx - h / 2, by - h * 0.55, cx + h / 2, by - h * 0.2], fill=c, outline=_line(c), width=w)
    d.polygon([(cx - h * 0.3, by - h * 0.55), (cx - h * 0.18, by - h * 0.85), (cx + h * 0.2, by - h * 0.85),
               (cx + h * 0.32, by - h * 0.55)], fill=c, outline=_line(c))
    d.rectangle([cx - h * 0.12, by - h * 0.78, cx + h * 0.14, by - h * 0.6], fill=(190, 225, 250))
    for x in (cx - h * 0.28, cx + h * 0.28):
        d.ellipse([x - h * 0.14, by - h * 0.3, x + h * 0.14, by - h * 0.02], fill=(40, 40, 40), outline=(90, 90, 90))


def draw_cat(d, cx, by, h, c, w):
    d.ellipse([cx - h * 0.35, by - h * 0.6, cx + h * 0.35, by], fill=c, outline=_line(c), width=w)
    hy = by - h * 0.68
    for s in (-1, 1):
        d.polygon([(cx + s * h * 0.28, hy - h * 0.05), (cx + s * h * 0.3, hy - h * 0.34), (cx + s * h * 0.08, hy - h * 0.2)],
                  fill=c, outline=_line(c))
    d.ellipse([cx - h * 0.28, hy - h * 0.25, cx + h * 0.28, hy + h * 0.2], fill=c, outline=_line(c), width=w)
    d.line([cx + h * 0.3, by - h * 0.1, cx + h * 0.5, by - h * 0.45], fill=_line(c), width=w)


def draw_dog(d, cx, by, h, c, w):
    top = by - h * 0.62
    for x in (cx - h * 0.38, cx - h * 0.22, cx + h * 0.12, cx + h * 0.26):
        d.rectangle([x, top + h * 0.25, x + h * 0.1, by], fill=c, outline=_line(c))
    d.rectangle([cx - h * 0.42, top, cx + h * 0.38, top + h * 0.32], fill=c, outline=_line(c), width=w)
    d.line([cx - h * 0.42, top + h * 0.05, cx - h * 0.58, top - h * 0.2], fill=_line(c), width=w)
    d.rectangle([cx + h * 0.2, top - h * 0.3, cx + h * 0.5, top + h * 0.05], fill=c, outline=_line(c), width=w)
    d.rectangle([cx + h * 0.45, top - h * 0.18, cx + h * 0.6, top + h * 0.02], fill=c, outline=_line(c))
    d.polygon([(cx + h * 0.2, top - h * 0.3), (cx + h * 0.1, top - h * 0.02), (cx + h * 0.26, top - h * 0.1)],
              fill=_darker(c), outline=_line(c))


def draw_flower(d, cx, by, h, c, w):
    d.line([cx, by, cx, by - h * 0.6], fill=(30, 120, 30), width=max(w, round(h / 10)))
    d.ellipse([cx - h * 0.02, by - h * 0.4, cx + h * 0.28, by - h * 0.28], fill=(30, 140, 30))
    y = by - h * 0.72
    for a in range(5):
        px, py = cx + h * 0.2 * np.cos(a * 1.2566), y + h * 0.2 * np.sin(a * 1.2566)
        d.ellipse([px - h * 0.15, py - h * 0.15, px + h * 0.15, py + h * 0.15], fill=c, outline=_line(c))
    center = (240, 200, 40) if c != COLORS['yellow'] else (150, 80, 20)
    d.ellipse([cx - h * 0.1, y - h * 0.1, cx + h * 0.1, y + h * 0.1], fill=center)


def draw_house(d, cx, by, h, c, w):
    d.rectangle([cx - h * 0.42, by - h * 0.6, cx + h * 0.42, by], fill=c, outline=_line(c), width=w)
    d.polygon([(cx - h * 0.52, by - h * 0.6), (cx, by - h), (cx + h * 0.52, by - h * 0.6)], fill=_darker(c), outline=_line(c))
    d.rectangle([cx - h * 0.1, by - h * 0.32, cx + h * 0.1, by], fill=(90, 55, 25) if c != COLORS['brown'] else (60, 35, 15))
    d.rectangle([cx + h * 0.16, by - h * 0.48, cx + h * 0.34, by - h * 0.3], fill=(190, 225, 250))


def draw_kite(d, cx, by, h, c, w):
    y = by - h * 0.6
    d.polygon([(cx, by - h), (cx + h * 0.3, y), (cx, by - h * 0.2), (cx - h * 0.3, y)], fill=c, outline=_line(c))
    d.line([cx, by - h, cx, by - h * 0.2], fill=_line(c), width=w)
    d.line([cx - h * 0.3, y, cx + h * 0.3, y], fill=_line(c), width=w)
    d.line([cx, by - h * 0.2, cx - h * 0.15, by + h * 0.1, cx + h * 0.05, by + h * 0.35], fill=_line(c), width=w)


def draw_tree(d, cx, by, h, c, w):
    d.rectangle([cx - h * 0.1, by - h * 0.45, cx + h * 0.1, by], fill=(115, 70, 30), outline=(60, 35, 15))
    d.ellipse([cx - h * 0.4, by - h, cx + h * 0.4, by - h * 0.35], fill=c, outline=_line(c), width=w)


def draw_umbrella(d, cx, by, h, c, w):
    d.line([cx, by - h * 0.6, cx, by - h * 0.05], fill=(60, 60, 60), width=max(w, round(h / 12)))
    d.arc([cx - h * 0.2, by - h * 0.2, cx, by], 0, 180, fill=(60, 60, 60), width=w)
    d.pieslice([cx - h * 0.5, by - h * 0.95, cx + h * 0.5, by - h * 0.25], 180, 360, fill=c, outline=_line(c), width=w)


DRAW = {'ball': draw_ball, 'balloon': draw_balloon, 'bird': draw_bird, 'car': draw_car, 'cat': draw_cat,
        'dog': draw_dog, 'flower': draw_flower, 'house': draw_house, 'kite': draw_kite, 'tree': draw_tree,
        'umbrella': draw_umbrella}


# Describing. Objects of the same kind and colour are one group ("two red balls"); groups are named left to right.
# Every sentence below is built from the scene, so it is true of the picture; the colour word always stands just
# before the kind, which is what the grounding judge reads.

SKY_SENTENCES = {
    'sunny': ['It is a sunny day.', 'The sun is shining.', 'The warm sun shines in the blue sky.',
              'The sky is bright and blue.', 'The big sun is up in the sky.', 'The sun is out and the sky is blue.'],
    'cloudy': ['It is a cloudy day.', 'The sky is gray.', 'White clouds float in the gray sky.',
               'Soft clouds cover the sky.', 'There are clouds in the sky.', 'The sun is hiding behind the clouds.'],
    'night': ['It is night.', 'The sky is dark.', 'The moon and the stars are out.', 'Little stars shine in the dark sky.',
              'It is night and the moon is bright.', 'The moon glows in the dark night sky.'],
    'sunset': ['It is evening.', 'The sun is going down.', 'The sky is orange and pink.',
               'The sun is setting and the sky glows orange.', 'It is the end of the day.', 'The evening sky is warm and orange.'],
}
GROUND_SENTENCES = {
    'grass': ['The grass is green.', 'The grass is soft and green.', 'Green grass covers the ground.'],
    'sand': ['The ground is sandy.', 'The sand is soft and yellow.', 'Yellow sand covers the ground.'],
    'snow': ['Snow covers the ground.', 'The ground is white with snow.', 'The snow is soft and white.'],
}
ON_GROUND = {'grass': ['on the grass', 'on the green grass'], 'sand': ['on the sand', 'on the yellow sand'],
             'snow': ['in the snow', 'on the white snow']}
MOOD_SENTENCES = {
    'sunny': ['It is a good day to play outside.', 'Everything looks warm and happy.'],
    'cloudy': ['Maybe it will rain soon.', 'It is a quiet and gray day.'],
    'night': ['It is almost time for bed.', 'Everything is quiet and sleepy.'],
    'sunset': ['Soon it will be night.', 'The day is almost over.'],
    'grass': ['It is a nice place for a picnic.'],
    'sand': ['It feels like a day at the beach.'],
    'snow': ['It is a cold day.', 'It is cold outside.'],
}
VERBS = {  # what each kind is doing, in the singular and the plural
    'ball': ('lies', 'lie'), 'balloon': ('floats', 'float'), 'bird': ('flies', 'fly'), 'car': ('is parked', 'are parked'),
    'cat': ('sits', 'sit'), 'dog': ('stands', 'stand'), 'flower': ('grows', 'grow'), 'house': ('stands', 'stand'),
    'kite': ('flies', 'fly'), 'tree': ('grows', 'grow'), 'umbrella': ('stands open', 'stand open'),
}
WISHES = {  # one imaginative, harmless line per kind, "{t}" is "the red ball"
    'ball': ['{T} is ready for a game.', 'Someone wants to kick {t}.', '{T} wants to roll and bounce.'],
    'balloon': ['{T} wants to fly up high.', 'A child let go of {t}.', '{T} is going up to the clouds.'],
    'bird': ['{T} sings a happy song.', '{T} is looking for its nest.', '{T} flaps its wings.'],
    'car': ['{T} is ready for a trip.', '{T} is waiting for its driver.', '{T} wants to go fast.'],
    'cat': ['{T} looks very happy.', '{T} wants a nap.', '{T} is looking for a friend.'],
    'dog': ['{T} wags its tail.', '{T} wants to run and play.', '{T} is a good friend.'],
    'flower': ['{T} smells sweet.', '{T} is pretty.', 'A bee would love {t}.'],
    'house': ['A happy family lives in {t}.', '{T} looks warm and cozy.', '{T} has a little door.'],
    'kite': ['The wind pulls {t} up high.', '{T} dances in the wind.', '{T} has a long tail.'],
    'tree': ['{T} is tall and strong.', '{T} has many leaves.', 'Birds like to rest in {t}.'],
    'umbrella': ['{T} is open wide.', '{T} is ready for the rain.', '{T} makes a little shade.'],
}
GROUP_WISHES = ['{T} look alike.', '{T} are like a little family.', 'Someone likes {t} very much.',
                '{T} are good friends.']  # for twins: "The two red balls look alike."
PLAY = ['{A} wants to play with {b}.', '{A} looks at {b}.', '{A} is close to {b}.']  # {A} an animal, {b} anything
ANIMALS = {'cat', 'dog', 'bird'}


def _groups(scene):
    """Objects grouped by (kind, colour), in left-to-right order of their first member."""
    groups = {}
    for o in scene['objects']:
        groups.setdefault((o['kind'], o['color']), []).append(o)
    return list(groups.values())


def _np(group, rng, det='a', size=None):
    """Noun phrase for a group: 'a big red ball', 'the red ball', 'two red balls'."""
    kind, color = group[0]['kind'], group[0]['color']
    if len(group) > 1:
        return f"{'the ' if det == 'the' else ''}{NUMBERS[len(group)]} {color} {PLURALS[kind]}"
    size = rng.random() < 0.5 if size is None else size
    words = [det if det != 'a' else ('an' if (group[0]['size'] if size else color)[0] in 'aeiou' else 'a')]
    if size:
        words.append(group[0]['size'])
    return ' '.join(words + [color, kind])


def _where(group, rng):
    """Where a group is: 'on the left', 'up in the sky on the right', 'one on the left and one in the middle'."""
    if len(group) > 1:
        return ' and '.join(f"one {_place(o['where'])}" for o in group)
    place = _place(group[0]['where'])
    if group[0]['kind'] in SKY_KINDS and rng.random() < 0.5:
        return f'up in the sky {place}'
    return place


def _place(where):
    return {'left': 'on the left', 'middle': 'in the middle', 'right': 'on the right'}[where]


def _cap(s):
    return s[0].upper() + s[1:]


def _object_sentence(g, scene, rng):
    """One true sentence that names group g with its colour, and often its place."""
    verb = VERBS[g[0]['kind']][len(g) > 1]
    be = 'are' if len(g) > 1 else 'is'
    np_, where = _np(g, rng), _where(g, rng)
    on = rng.choice(ON_GROUND[scene['ground']]) if g[0]['kind'] in GROUND_KINDS else 'in the sky'
    return rng.choice([f'There {be} {np_} {where}.', f'{_cap(np_)} {verb} {where}.', f'{_cap(where)}, there {be} {np_}.',
                       f'I can see {np_} {where}.', f'{_cap(np_)} {verb} {on}.'])


def _list_sentence(groups, scene, rng):
    """One sentence that names every group, left to right."""
    phrases = [_np(g, rng) for g in groups]
    names = phrases[0] if len(phrases) == 1 else ', '.join(phrases[:-1]) + ' and ' + phrases[-1]
    be = 'are' if sum(len(g) for g in groups) > 1 else 'is'
    where = rng.choice(ON_GROUND[scene['ground']]) if all(g[0]['kind'] in GROUND_KINDS for g in groups) else 'in the picture'
    return rng.choice([f'There {be} {names} {where}.', f'I can see {names}.', f'{_cap(names)} {be} {where}.',
                       f'This picture shows {names}.'])


def _story_sentences(groups, rng):
    """Imaginative lines about what is really there: wishes of one object, or an animal with another thing."""
    out = []
    for g in groups:
        t = _np(g, rng, det='the', size=False)
        out.append(rng.choice(WISHES[g[0]['kind']] if len(g) == 1 else GROUP_WISHES).format(t=t, T=_cap(t)))
    for a in groups:
        for b in groups:
            if a is not b and len(a) == 1 and a[0]['kind'] in ANIMALS:
                out.append(rng.choice(PLAY).format(A=_cap(_np(a, rng, det='the', size=False)),
                                                    b=_np(b, rng, det='the', size=False)))
    return out


def _relation_sentences(scene, rng):
    """True spatial relations between single objects: above, next to, left of."""
    singles = [g[0] for g in _groups(scene) if len(g) == 1]
    out = []
    for a in singles:
        for b in singles:
            if a is b:
                continue
            ta, tb = f"the {a['color']} {a['kind']}", f"the {b['color']} {b['kind']}"
            ia, ib = PLACES.index(a['where']), PLACES.index(b['where'])
            if ia == ib and a['kind'] in SKY_KINDS and b['kind'] in GROUND_KINDS:
                out.append(f'{_cap(ta)} is above {tb}.')
            elif ib - ia == 1 and (a['kind'] in SKY_KINDS) == (b['kind'] in SKY_KINDS):
                out.append(rng.choice([f'{_cap(ta)} is next to {tb}.', f'{_cap(ta)} is to the left of {tb}.']))
            elif a['size'] != b['size'] and a['kind'] == b['kind']:
                out.append(f"{_cap(ta)} is {'bigger' if a['size'] == 'big' else 'smaller'} than {tb}.")
    return out


def _long_sentences(g, scene, rng):
    """The long style's sentences about one group: its name with size and place, then true detail and a wish."""
    kind, n = g[0]['kind'], len(g)
    name = _np(g, rng, size=True)
    be = 'are' if n > 1 else 'is'
    first = rng.choice([f'There {be} {name} {_where(g, rng)}.', f'{_cap(name)} {VERBS[kind][n > 1]} {_where(g, rng)}.',
                        f'{_cap(_where(g, rng))}, I can see {name}.'])
    t = _np(g, rng, det='the', size=False)
    if n > 1:
        sizes = {o['size'] for o in g}
        extra = [f"{_cap(t)} are both {g[0]['size']}." if len(sizes) == 1 else f'One {kind} is big and one is small.']
        extra += [w.format(t=t, T=_cap(t)) for w in rng.sample(GROUP_WISHES, 2)]
    else:
        extra = [w.format(t=t, T=_cap(t)) for w in rng.sample(WISHES[kind], 2)]
        if kind in GROUND_KINDS:
            extra.append(f'{_cap(t)} {VERBS[kind][0]} {rng.choice(ON_GROUND[scene["ground"]])}.')
    return [first] + extra


def _join(a, b):
    """Two sentences as one: 'The sun is out.' + 'The sky is blue.' -> 'The sun is out, and the sky is blue.'
    A second sentence about the same single thing says 'it': 'The cat is small, and it wants a nap.'"""
    subject = ' '.join(a.split()[:3])
    if subject.startswith('The ') and subject.split()[-1] in KINDS and b.startswith(subject + ' '):
        b = 'it' + b[len(subject):]
    return a[:-1] + ', and ' + (b if b.startswith('I ') else b[0].lower() + b[1:])


def _words(text):
    return len(text.split())


def _sentences(text):
    return len(re.findall(r'[.!?](\s|$)', text))


def describe_scene(scene, style, rng):
    """A true description of the scene in the given style: short 20-25 words in 2-3 sentences, long 60-70 in 5-6.
    True sentences are drawn at random and joined with 'and' until the length fits, so wording varies."""
    lo, hi, smin, smax = LENGTHS[style]
    groups = _groups(scene)
    for attempt in range(5000):
        sky = rng.sample(SKY_SENTENCES[scene['sky']], 2)
        ground = rng.choice(GROUND_SENTENCES[scene['ground']])
        mood = rng.choice(MOOD_SENTENCES[scene['sky']] + MOOD_SENTENCES[scene['ground']])
        story = _story_sentences(groups, rng)
        if style == 'short':
            naming = [_list_sentence(groups, scene, rng)] if len(groups) > 1 or rng.random() < 0.5 else \
                [_object_sentence(groups[0], scene, rng)]
            sents = naming + rng.sample([sky[0], ground, mood] + story, rng.randint(1, 2))  # what is there, first
        else:
            about = [s for g in groups for s in _long_sentences(g, scene, rng)[:rng.randint(1, 4)]]
            between = _relation_sentences(scene, rng) + [s for s in story if s not in about]
            if len(scene['objects']) == 1:
                between.append(rng.choice(['Nothing else is in the picture.', 'It is all alone in the picture.']))
            rng.shuffle(between)
            sents = sky[:rng.randint(1, 2)] + about + between[:rng.randint(0, 3)] + rng.sample([ground, mood], rng.randint(1, 2))
        while len(sents) > smax:  # join a random pair of neighbours, favouring short ones
            i = min(rng.sample(range(len(sents) - 1), min(2, len(sents) - 1)), key=lambda i: _words(sents[i] + sents[i + 1]))
            sents[i:i + 2] = [_join(sents[i], sents[i + 1])]
        text = ' '.join(sents)
        if lo <= _words(text) <= hi and smin <= _sentences(text) <= smax:
            return text
    raise RuntimeError(f'no {style} description fits scene {scene}')  # never seen: the sentence pools are wide


def make_picturebook(out_dir, n_train=12000, n_val=500, n_test=500, img_size=64, seed=1337):
    """Draw and describe n_train + n_val + n_test scenes into out_dir: PNGs in images/, one JSONL per split.
    Deterministic for a seed; a scene in val or test never occurs in train (test is drawn first, then val, then train)."""
    if os.path.exists(os.path.join(out_dir, 'train.jsonl')):
        print(f'{out_dir} already has a dataset; using it (delete the folder to draw a new one)')
        return
    os.makedirs(os.path.join(out_dir, 'images'), exist_ok=True)
    rng = random.Random(seed)
    seen = set()
    for split, n in [('test', n_test), ('val', n_val), ('train', n_train)]:
        records = []
        while len(records) < n:
            scene = random_scene(rng)
            key = scene_key(scene)
            if key in seen:
                continue
            seen.add(key)
            rid = f'{split}-{len(records):05d}'
            image = f'images/{rid}.png'
            draw_scene(scene, img_size).save(os.path.join(out_dir, image))
            records.append({'id': rid, 'image': image, 'short': describe_scene(scene, 'short', rng),
                            'long': describe_scene(scene, 'long', rng), 'scene': scene})
        if split == 'test':
            records = [add_beginnings(r) for r in records]
        write_jsonl(os.path.join(out_dir, f'{split}.jsonl'), records)
    print(f'wrote {n_train}/{n_val}/{n_test} train/val/test picture-book scenes to {out_dir}')


# -----------------------------------------------------------------------------
# JSONL and images: the interchange format, read and written in one place

def read_jsonl(path):
    if not os.path.exists(path):
        raise UserError(f'{path} does not exist')
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f'{path}:{n} is not valid JSON')
    return records


def write_jsonl(path, records):
    """Write all records to path atomically: a crash never leaves half a file where a whole one was."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        for r in records:
            f.write(json.dumps(r) + '\n')
    os.replace(tmp, path)


def add_beginnings(record):
    """A test record with "prompts": the first 6-7 words of its short and 18-20 words of its long description, for
    the paper's completion task. How many words is drawn from the record's id, so it is the same on every run."""
    rng = random.Random(record['id'])
    return record | {'prompts': {s: ' '.join(record[s].split()[:rng.randint(*BEGINNINGS[s])])
                                 for s in STYLES if record.get(s)}}


def open_image(path):
    """An image file as an RGB Pillow image, read whole; a missing or unreadable file is a UserError."""
    if not os.path.exists(path):
        raise UserError(f'image {path} does not exist')
    try:
        with Image.open(path) as im:
            return im.convert('RGB')
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f'cannot read image {path}: {e}')


def load_image(path, size):
    """An image file as a (size, size, 3) uint8 array; a missing or unreadable file is a UserError."""
    im = open_image(path)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


# -----------------------------------------------------------------------------
# 2. Datasets from photos: the paper's ShortDesc and LongDesc, written by a chat model
#
# The paper's recipe: about 28k COCO images, each with five human captions; GPT-4o read the captions and wrote a
# young child's description of the scene, once short and once long. Here the same for COCO (--dataset=coco), for
# any folder of pictures (--dataset=folder: the model looks at each picture, as there are no captions), and for
# texts a user already has (--dataset=jsonl: no model at all). Any OpenAI-compatible server can stand in for
# GPT-4o (--base_url, --model): a local open model costs nothing.
#
# A build takes hours and costs money, so it never loses work: each finished image is appended to OUT/build.jsonl
# and flushed at once, a rerun skips what is there, and the split files are written from that log at the end.

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


def parse_json_reply(text):
    """The first JSON object in a model's reply, whether bare, in a ```json fence or inside prose. ValueError if none,
    saying so in words that can be sent back to the model."""
    decoder = json.JSONDecoder()
    start = text.find('{')
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find('{', start + 1)
    raise ValueError('the reply is not the JSON object asked for: there is no JSON object in it')


def check_descriptions(reply):
    """The descriptions in a reply as {'short', 'long'}, or None and what is wrong, in words the model is told on a
    retry: each must have the style's number of words and sentences, be one plain paragraph and open freshly."""
    try:
        obj = parse_json_reply(reply)
    except ValueError as e:
        return None, str(e)
    texts = {}
    for style in STYLES:
        text = obj.get(style)
        if not isinstance(text, str) or not text.strip():
            return None, f'the JSON object has no "{style}" description'
        lo, hi, smin, smax = LENGTHS[style]
        flat = ' '.join(text.split())
        words, sentences = _words(flat), _sentences(flat)
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


def image_content(path, max_side=512):
    """A picture as a Chat Completions message part: a JPEG at most max_side pixels wide, sent inline at low detail
    (a fixed 85 input tokens on GPT-4o). A missing or unreadable picture is a UserError."""
    im = open_image(path)
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format='JPEG', quality=85)
    url = 'data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode()
    return {'type': 'image_url', 'image_url': {'url': url, 'detail': 'low'}}


# The endpoint. Faults split three ways: a request the server turned down is that image's problem (RequestFailed:
# the image is recorded as skipped); a fault no retry can fix (a refused key, no quota, an unknown model, a server
# that stays down) stops the whole run at once (UserError), before it burns through the dataset; everything else
# (429, 5xx, timeouts, dropped connections) is retried with exponential backoff that honours Retry-After.

BACKOFF = 1.0  # seconds before the first retry; doubled each time, at most a minute
PRICES = {  # USD per million input and output tokens, OpenAI's list prices in 2025; check yours, or set --price_in/out
    'gpt-4o': (2.50, 10.00), 'gpt-4o-mini': (0.15, 0.60), 'gpt-4.1': (2.00, 8.00), 'gpt-4.1-mini': (0.40, 1.60),
    'gpt-4.1-nano': (0.10, 0.40),
}


class RequestFailed(Exception):
    """The server turned this one request down (a 4xx other than a key, quota or model fault)."""


class Stopped(Exception):
    """The run is stopping (Ctrl-C or a fatal fault elsewhere): this request gives up and records nothing."""


class ChatEndpoint:
    """An OpenAI-compatible Chat Completions endpoint, called from many threads at once. grade.py uses it too."""

    def __init__(self, base_url, model, timeout=60.0, max_retries=6):
        self.url = base_url.rstrip('/') + '/chat/completions'
        self.model, self.timeout, self.max_retries = model, timeout, max_retries
        self.key = os.environ.get('OPENAI_API_KEY', '')
        if not self.key and 'api.openai.com' in base_url:
            raise UserError('set OPENAI_API_KEY to your OpenAI API key, or point --base_url at a local server')
        self.stop = threading.Event()  # set to make every waiting request give up: Ctrl-C, or a fatal fault
        self.answered = False  # until the server has answered once, a request it turns down stops the run

    def redact(self, text):
        """Text safe to print or store: the API key never appears in logs, errors or files."""
        return text.replace(self.key, '[OPENAI_API_KEY]') if self.key else text

    def complete(self, messages, response_format=None, max_tokens=600, temperature=None):
        """The reply's text and its token usage {'prompt_tokens', 'completion_tokens'}."""
        body = {'model': self.model, 'messages': messages, 'max_tokens': max_tokens}
        if response_format:
            body['response_format'] = response_format
        if temperature is not None:
            body['temperature'] = temperature
        headers = {'Authorization': f'Bearer {self.key}'} if self.key else {}
        for attempt in range(self.max_retries + 1):
            if self.stop.is_set():
                raise Stopped
            wait = min(60.0, BACKOFF * 2 ** attempt)
            try:
                r = requests.post(self.url, json=body, headers=headers, timeout=(10, self.timeout))
            except requests.Timeout:
                problem = f'no reply within {self.timeout:g}s'
            except requests.ConnectionError as e:
                problem = f'cannot reach {self.url} ({type(e).__name__})'
            else:
                if r.status_code == 200:
                    try:
                        reply = r.json()
                        message = reply['choices'][0]['message']
                        used = reply.get('usage') or {}
                        usage = {k: int(used.get(k) or 0) for k in ('prompt_tokens', 'completion_tokens')}
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        message = None
                    self.answered = self.answered or isinstance(message, dict)
                    if isinstance(message, dict) and message.get('refusal'):  # structured outputs' way to say no
                        raise RequestFailed(f"the model refused: {message['refusal']}")
                    if isinstance(message, dict) and isinstance(message.get('content'), str):
                        return message['content'], usage
                    problem = 'the server sent a reply that is not a Chat Completions response'
                else:
                    problem = self._fault(r)
                    wait = _retry_after(r) or wait
            if attempt < self.max_retries:
                self.stop.wait(wait)
        raise UserError(f'{problem}, {self.max_retries + 1} times in a row; finished work is saved: '
                        'run the same command again to go on')

    def ask(self, messages, check, response_format=None, max_attempts=3, temperature=None):
        """Ask until a reply passes check(reply) -> (value, None) or (None, what is wrong). A reply that fails is sent
        back with what is wrong, up to max_attempts replies. Returns (value, None, usage) or (None, why, usage); a
        request the server turns down (RequestFailed) ends the asking with that as the why."""
        usage = {'prompt_tokens': 0, 'completion_tokens': 0}
        for attempt in range(max_attempts):
            try:
                reply, used = self.complete(messages, response_format, temperature=temperature)
            except RequestFailed as e:
                return None, f'the server turned the request down: {e}', usage
            usage = {k: usage[k] + used[k] for k in usage}
            value, problem = check(reply)
            if problem is None:
                return value, None, usage
            messages = messages + [{'role': 'assistant', 'content': reply},
                                   {'role': 'user', 'content': f'Not quite: {problem}. Answer again, keeping every rule.'}]
        return None, f'{max_attempts} replies broke the rules, the last because {problem}', usage

    def _fault(self, r):
        """What an HTTP error means, said in one line; raises for the faults a retry cannot fix."""
        try:
            error = r.json().get('error') or {}
            message, code = str(error.get('message', '')), str(error.get('code') or error.get('type') or '')
        except (ValueError, AttributeError):
            message, code = r.text[:200], ''
        said = self.redact(f'HTTP {r.status_code}' + (f': {message}' if message else ''))
        if r.status_code in (401, 403):
            raise UserError(f'the server refused the API key ({said}); set OPENAI_API_KEY to a valid key')
        if r.status_code == 429 and 'quota' in code + message:
            raise UserError(f'the account has no quota left ({said}); add credit or use another key')
        if r.status_code == 404:
            raise UserError(f'{self.url} or model {self.model!r} does not exist ({said}); check --base_url and --model')
        if r.status_code != 429 and r.status_code < 500:
            if not self.answered:  # the first request: more of the same would be turned down too
                raise UserError(f'the server turned down the first request ({said}); check --base_url and --model, '
                                'and that the server supports JSON-schema replies (response_format)')
            raise RequestFailed(said)
        return said


def _retry_after(r):
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), at most 5 minutes; None if unsaid."""
    value = r.headers.get('Retry-After')
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(300.0, max(0.0, seconds))


def price(c):
    """USD per million (input, output) tokens for c.model, or None if unknown."""
    return (c.price_in, c.price_out) if c.price_in >= 0 and c.price_out >= 0 else PRICES.get(c.model)


def spent(usage, c):
    """' ($1.23)' for the tokens used so far, or '' where the price is unknown."""
    p = price(c)
    return f' (${(usage["prompt_tokens"] * p[0] + usage["completion_tokens"] * p[1]) / 1e6:,.2f})' if p else ''


def confirm(plan, c):
    """Say what a run will spend and ask to go on, unless c.yes. False if the user says no."""
    print(plan)
    if c.yes:
        return True
    if not sys.stdin.isatty():
        raise UserError('add --yes to start without being asked')
    if input('go on? [y/N] ').strip().lower() in ('y', 'yes'):
        return True
    print('nothing was sent')
    return False


def run_jobs(chat, todo, job, log_path, c, words):
    """job(item) -> record, for every item, by c.workers threads at once. Each record is appended to log_path
    and flushed to disk the moment it is made, so an interrupted run keeps everything it paid for. The first item
    goes alone: a wrong key, model or URL costs one request, not one per worker. words: ('described', 'images',
    'skipped') says what the progress line counts; a record with a 'skipped' or 'failed' reason counts as the last."""
    lock = threading.Lock()
    totals = {'prompt_tokens': 0, 'completion_tokens': 0, 'done': 0, 'bad': 0}

    def work(item):
        if chat.stop.is_set():
            return
        try:
            record = job(item)
        except Stopped:
            return
        except UserError:
            chat.stop.set()  # no other worker starts a request after a fatal fault
            raise
        with lock:  # one whole line at a time, on disk before the next
            log.write(json.dumps(record) + '\n')
            log.flush()
            os.fsync(log.fileno())
            totals['bad' if 'skipped' in record or 'failed' in record else 'done'] += 1
            for k in ('prompt_tokens', 'completion_tokens'):
                totals[k] += record['usage'][k]

    done, what, bad = words
    progress = Progress()
    with open(log_path, 'a') as log:
        work(todo[0])
        pool = ThreadPoolExecutor(c.workers)
        try:
            for future in as_completed([pool.submit(work, it) for it in todo[1:]]):
                future.result()
                progress(f"{done} {totals['done']:,}, {bad} {totals['bad']:,} of {len(todo):,} | "
                         f"{totals['prompt_tokens'] + totals['completion_tokens']:,} tokens{spent(totals, c)}")
        finally:
            chat.stop.set()  # waiting requests give up; those in flight finish and are written
            pool.shutdown(cancel_futures=True)
    progress(f"{done} {totals['done']:,} {what}, {bad} {totals['bad']:,}; {totals['prompt_tokens']:,} input and "
             f"{totals['completion_tokens']:,} output tokens{spent(totals, c)}", last=True)
    return totals


class Progress:
    """One status line rewritten in place, at most once a second, so a log file gets a line a second, not one per image."""

    def __init__(self):
        self.shown = 0.0

    def __call__(self, text, last=False):
        if last or time.time() - self.shown >= 1:
            print('\r' + text, end='\n' if last else '', flush=True)
            self.shown = time.time()


def read_log(path):
    """The records of a log that run_jobs appends to. A line cut short by a killed run is removed, so that the next
    append starts on a line of its own."""
    if not os.path.exists(path):
        return []
    with open(path, 'rb') as f:
        raw = f.read()
    if raw and not raw.endswith(b'\n'):
        with open(path, 'r+b') as f:
            f.truncate(raw.rfind(b'\n') + 1)
        raw = raw[:raw.rfind(b'\n') + 1]
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


# One image, described: the request, the rules checked, a reply that breaks them sent back with what is wrong.

def request_text(item):
    captions = item.get('captions')
    return CAPTIONS_PROMPT.format(captions='\n'.join(f'- {s}' for s in captions)) if captions else IMAGE_PROMPT


def user_message(item, out_dir, c):
    """The request about one item: its captions, its picture when there are none (or with --with_image), or both."""
    parts = [{'type': 'text', 'text': request_text(item)}]
    if c.with_image or not item.get('captions'):
        parts.append(image_content(os.path.join(out_dir, item['image'])))
    return {'role': 'user', 'content': parts}


def describe_image(chat, item, out_dir, c):
    """The build record of one image: its two descriptions, or why it was skipped; with the tokens it took."""
    try:
        messages = [{'role': 'system', 'content': SYSTEM_PROMPT}, user_message(item, out_dir, c)]
    except UserError as e:  # the picture cannot be read: no request is sent
        return item | {'skipped': str(e), 'usage': {'prompt_tokens': 0, 'completion_tokens': 0}}
    texts, problem, usage = chat.ask(messages, check_descriptions, DESCRIPTIONS_FORMAT, c.max_attempts)
    return item | (texts or {'skipped': problem}) | {'usage': usage}


def estimate(texts, with_image, reply_tokens, c):
    """What sending one request per text will take, said before any is spent: about 4 characters a token, 85 tokens a
    low-detail picture (with_image), reply_tokens written per reply, and one reply in ten retried."""
    tokens_in = 1.1 * sum(len(t) / 4 + (85 if with_image else 0) for t in texts)
    tokens_out = 1.1 * reply_tokens * len(texts)
    p = price(c)
    dollars = f'about ${(tokens_in * p[0] + tokens_out * p[1]) / 1e6:,.2f} at ${p[0]:g} in and ${p[1]:g} out per ' \
              'million tokens' if p else f'cost unknown: no price for {c.model} (set --price_in and --price_out)'
    return f'{len(texts):,} requests to {c.model} at {c.base_url}: about {tokens_in / 1e6:.2f}M input and ' \
           f'{tokens_out / 1e6:.2f}M output tokens, {dollars}'


# The build loop: what is done is read from the log, the rest is described by a bounded pool of threads, each
# record appended whole and flushed the moment it is ready.

def describe_all(items, out_dir, c):
    """Describe every item not yet in OUT/build.jsonl. Returns False if the user declined to spend."""
    log_path = os.path.join(out_dir, 'build.jsonl')
    done = {r['id'] for r in read_log(log_path)}
    todo = [it for it in items if it['id'] not in done]
    if not todo:
        return True
    plan = estimate([SYSTEM_PROMPT + request_text(it) for it in todo], c.with_image or not todo[0].get('captions'), 170, c)
    if not confirm(('' if not done else f'{len(done):,} images are already done; ') + plan, c):
        return False
    chat = ChatEndpoint(c.base_url, c.model, c.timeout, c.max_retries)
    run_jobs(chat, todo, lambda item: describe_image(chat, item, out_dir, c), log_path, c, ('described', 'images', 'skipped'))
    return True


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
        write_jsonl(os.path.join(out_dir, f'{split}.jsonl'), [add_beginnings(r) for r in rows] if split == 'test' else rows)
    skipped = [r for r in records if 'skipped' in r]
    counts = {s: sum(it['split'] == s and it['id'] in by_id for it in items) for s in ('train', 'val', 'test')}
    print(f"wrote {counts['train']:,}/{counts['val']:,}/{counts['test']:,} train/val/test records to {out_dir}"
          + (f'; {len(skipped):,} images skipped (reasons in build.jsonl), e.g. {skipped[0]["skipped"]}' if skipped else ''))


# The sources: where the images (and captions) come from.

def download(url, path, verify, timeout=60.0, retries=5, show=''):
    """Stream url to path. A partial download (path.part) is resumed with an HTTP Range request, and a file only takes
    its final name after its length and verify(path.part) have passed, so a file at path is always whole. With
    show, a progress line of that name."""
    if os.path.exists(path):
        return
    part, problem, progress = path + '.part', '', Progress()
    for attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            with requests.get(url, headers={'Range': f'bytes={have}-'} if have else {}, stream=True,
                              timeout=(10, timeout)) as r:
                if r.status_code == 416:  # the part is already whole, or the server changed the file: start again
                    os.remove(part)
                    continue
                if r.status_code not in (200, 206):
                    problem = f'HTTP {r.status_code}'
                    if r.status_code < 500 and r.status_code != 429:
                        break
                    raise requests.ConnectionError(problem)
                if r.status_code == 200:
                    have = 0  # the server ignored the range: the whole file comes again
                total = have + int(r.headers['Content-Length']) if 'Content-Length' in r.headers else None
                with open(part, 'ab' if have else 'wb') as f:
                    for chunk in r.iter_content(1 << 16):
                        f.write(chunk)
                        if show:
                            progress(f'{show}: {f.tell() / 1e6:,.1f}' + (f' of {total / 1e6:,.1f}' if total else '') + ' MB')
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
            problem = str(e)
        time.sleep(min(60.0, BACKOFF * 2 ** attempt))
    raise RequestFailed(f'cannot download {url}: {problem}')


def verify_image(path):
    """None if path is a whole, readable image, else what is wrong with it."""
    try:
        open_image(path)
    except UserError as e:
        return str(e)


def verify_zip(path):
    """None if path is a whole zip archive (every member's checksum is right), else what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        return f'{bad} in the archive is corrupt' if bad else None
    except zipfile.BadZipFile as e:
        return f'not a zip archive ({e})'


def coco_items(c, out_dir):
    """c.n + c.n_test COCO train2017 images with at least five captions, picked at random for the seed; the caption
    annotations (241 MB) and just those images are downloaded, not the 18 GB archive."""
    zip_path = os.path.join(out_dir, 'annotations_trainval2017.zip')
    try:
        download(f'{c.coco_url}/annotations/annotations_trainval2017.zip', zip_path, verify_zip, c.timeout,
                 show='downloading the COCO annotations')
    except RequestFailed as e:
        raise UserError(f'{e}; run again to resume the download')
    with zipfile.ZipFile(zip_path) as z, z.open('annotations/captions_train2017.json') as f:
        ann = json.load(f)
    captions = {}
    for a in sorted(ann['annotations'], key=lambda a: a['id']):
        captions.setdefault(a['image_id'], []).append(' '.join(a['caption'].split()))
    files = {im['id']: im['file_name'] for im in ann['images']}
    eligible = sorted(i for i, caps in captions.items() if len(caps) >= 5 and i in files)
    n = c.n or 28000
    if n + c.n_test > len(eligible):
        raise UserError(f'COCO has {len(eligible):,} images with five captions, fewer than --n={n} plus '
                        f'--n_test={c.n_test}; ask for fewer')
    chosen = random.Random(c.seed).sample(eligible, n + c.n_test)
    items = assign_splits([{'id': f'coco-{i}', 'image': f'images/{files[i]}', 'captions': captions[i][:5]}
                           for i in chosen], c.n_test)
    os.makedirs(os.path.join(out_dir, 'images'), exist_ok=True)
    missing = [it for it in items if not os.path.exists(os.path.join(out_dir, it['image']))]
    failed = []

    def fetch(it):
        try:
            download(f"{c.coco_url}/train2017/{os.path.basename(it['image'])}", os.path.join(out_dir, it['image']),
                     verify_image, c.timeout)
        except RequestFailed as e:
            failed.append((it['id'], str(e)))

    progress = Progress()
    with ThreadPoolExecutor(c.workers) as pool:
        for k, _ in enumerate(as_completed([pool.submit(fetch, it) for it in missing]), 1):
            progress(f'downloading images: {k:,}/{len(missing):,}')
    if missing:
        progress(f'downloaded {len(missing) - len(failed):,} images' + (
            f'; {len(failed)} failed, e.g. {failed[0][1]} (run again to retry them)' if failed else ''), last=True)
    gone = {i for i, _ in failed}
    return [it for it in items if it['id'] not in gone]


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif')


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
    and/or "long" text. Records without a readable image or a text are skipped, and said so."""
    records, root, skipped = [], os.path.dirname(os.path.abspath(c.path)), []
    for i, r in enumerate(read_jsonl(c.path)):
        image = os.path.join(root, str(r.get('image', '')))
        texts = {s: ' '.join(r[s].split()) for s in STYLES if isinstance(r.get(s), str) and r[s].strip()}
        problem = 'has no "image"' if not r.get('image') else 'has no "short" or "long" text' if not texts else \
            verify_image(image)
        if problem:
            skipped.append(f'record {i + 1} {problem}')
        else:
            records.append({'id': str(r.get('id', i)), 'image': os.path.relpath(image, out_dir), **texts})
    if skipped:
        print(f'skipped {len(skipped)} records of {c.path}, e.g. {skipped[0]}')
    return pick(records, c, f'{c.path} has {len(records)} usable records')


def pick(items, c, has):
    """c.n items (0: all) plus c.n_test, in a random order for the seed, split by assign_splits. has: '... has N
    pictures', said when there are too few."""
    if len(items) < c.n_test + 2:
        raise UserError(f'{has}; at least {c.n_test + 2} are needed with --n_test={c.n_test}')
    random.Random(c.seed).shuffle(items)
    return assign_splits(items[:c.n + c.n_test] if c.n else items, c.n_test)


def build(c, out_dir):
    """Build the dataset c.dataset into out_dir, resuming whatever an earlier run of the same command began."""
    os.makedirs(out_dir, exist_ok=True)
    if c.dataset == 'jsonl':
        items = jsonl_records(c, out_dir)
        return write_splits(out_dir, items, items)
    items = coco_items(c, out_dir) if c.dataset == 'coco' else folder_items(c, out_dir)
    if describe_all(items, out_dir, c):
        write_splits(out_dir, items, read_log(os.path.join(out_dir, 'build.jsonl')))


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
    import tiktoken  # imported here so that drawing scenes needs no tokenizer files
    return tiktoken.get_encoding('r50k_base')


class Tokenizer:
    def __init__(self, gpt2_ids):
        self.gpt2_ids = list(gpt2_ids)  # compact id len(SPECIALS) + i  <->  GPT-2 id gpt2_ids[i]
        self.to_compact = {g: i + len(SPECIALS) for i, g in enumerate(self.gpt2_ids)}
        self.bpe = gpt2_encoding()

    @classmethod
    def fit(cls, texts):
        bpe = gpt2_encoding()
        return cls(sorted({t for ids in bpe.encode_ordinary_batch(list(texts)) for t in ids}))

    def __len__(self):
        return len(SPECIALS) + len(self.gpt2_ids)

    def encode(self, text):
        return [self.to_compact.get(t, UNK) for t in self.bpe.encode_ordinary(text)]

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


def prepare(data_dir, img_size, splits=('train', 'val')):
    """Turn each split's JSONL and images into arrays (skipped where they are already there). Returns the tokenizer."""
    vocab_path = os.path.join(data_dir, 'vocab.json')
    if os.path.exists(vocab_path):
        with open(vocab_path) as f:
            tok = Tokenizer.from_state(json.load(f))
    else:
        train = read_jsonl(os.path.join(data_dir, 'train.jsonl'))
        tok = Tokenizer.fit(r[s] for r in train for s in STYLES if r.get(s))
        with open(vocab_path + '.tmp', 'w') as f:
            json.dump(tok.state(), f)
        os.replace(vocab_path + '.tmp', vocab_path)
    for split in splits:
        images_path, tokens_path = prepared_paths(data_dir, split, img_size)
        if os.path.exists(images_path) and os.path.exists(tokens_path):
            continue
        records = read_jsonl(os.path.join(data_dir, f'{split}.jsonl'))
        if not records:
            raise UserError(f'{data_dir}/{split}.jsonl has no records')
        texts = [[[STYLE_TOKEN[s]] + tok.encode(r[s]) + [EOT] if r.get(s) else [] for s in STYLES] for r in records]
        T = max(len(t) for pair in texts for t in pair)
        tokens = np.full((len(records), 2, T), PAD, dtype=np.uint16)
        for i, pair in enumerate(texts):
            for j, t in enumerate(pair):
                tokens[i, j, :len(t)] = t
        images = np.lib.format.open_memmap(images_path + '.tmp.npy', mode='w+', dtype=np.uint8,
                                           shape=(len(records), img_size, img_size, 3))
        for i, r in enumerate(records):
            images[i] = load_image(os.path.join(data_dir, r['image']), img_size)
        images.flush()
        del images
        np.save(tokens_path + '.tmp.npy', tokens)
        os.replace(tokens_path + '.tmp.npy', tokens_path)
        os.replace(images_path + '.tmp.npy', images_path)
        print(f'prepared {split}: {len(records)} images at {img_size}px, texts up to {T} tokens, vocab {len(tok)}')
    return tok


# -----------------------------------------------------------------------------

DEFAULTS = dict(
    dataset='picturebook',  # picturebook, coco, folder or jsonl
    out='',                 # the dataset folder (default: data/DATASET)
    seed=1337,              # which scenes are drawn, which images are picked and how they are split
    n_test=-1,              # held-out test images (-1: 500 for picturebook, the paper's 25 for the others)
    # picturebook
    n_train=12000,          # training scenes
    n_val=500,              # validation scenes
    img_size=64,            # the pictures' size in pixels (and the size the arrays are prepared at)
    # coco, folder, jsonl: n images are split 90/10 into train and val, as in the paper
    n=0,                    # images besides the test ones (0: 28000 for coco, all there are for folder and jsonl)
    images='',              # folder: the folder of pictures
    path='',                # jsonl: the file of {"image", "short", "long"} records
    coco_url='http://images.cocodataset.org',  # coco: where the annotations and images are downloaded from
    with_image=False,       # coco: send the picture along with its five captions
    # the chat model that writes the descriptions (coco, folder)
    base_url='https://api.openai.com/v1',  # any OpenAI-compatible server; the key comes from OPENAI_API_KEY
    model='gpt-4o',         # the paper's writer
    workers=8,              # requests (and downloads) at once
    timeout=60.0,           # seconds to wait for a reply before trying again
    max_retries=6,          # retries of a request after a timeout, 429 or 5xx
    max_attempts=3,         # replies asked for per image before it is skipped for breaking the rules
    price_in=-1.0,          # USD per million input tokens, for the estimate (-1: the known price of --model)
    price_out=-1.0,         # USD per million output tokens
    yes=False,              # start spending without asking
)


def main(argv):
    c = SimpleNamespace(**parse_flags(DEFAULTS, argv))
    if c.dataset not in ('picturebook', 'coco', 'folder', 'jsonl'):
        raise UserError(f'--dataset={c.dataset}: choose picturebook, coco, folder or jsonl')
    if c.n_test == -1:
        c.n_test = 500 if c.dataset == 'picturebook' else 25
    for key in ('n', 'n_train', 'n_val', 'n_test'):
        if getattr(c, key) < 0:
            raise UserError(f'--{key} cannot be negative')
    for key in ('workers', 'max_attempts', 'img_size'):
        if getattr(c, key) < 1:
            raise UserError(f'--{key} must be at least 1')
    if c.timeout <= 0 or c.max_retries < 0:
        raise UserError('--timeout must be positive and --max_retries at least 0')
    out = c.out or f'data/{c.dataset}'
    if c.dataset == 'picturebook':
        make_picturebook(out, c.n_train, c.n_val, c.n_test, c.img_size, c.seed)
        prepare(out, c.img_size)
    else:
        if c.dataset == 'jsonl' and not c.path:
            raise UserError('--dataset=jsonl needs --path=FILE')
        build(c, out)


if __name__ == '__main__':
    run_cli(main)
