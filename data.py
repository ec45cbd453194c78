"""
Datasets for nanovlms, and the one format they all share.

Every dataset is a folder of JSONL files, one record per image:
    {"id": "...", "image": "images/00001.png", "short": "...", "long": "...", "scene": {...}}
with `image` a path relative to the folder, `short` a 20-25 word description (the paper's ShortDesc style) and
`long` a 60-70 word one (LongDesc). `scene` is optional: the picture-book world records the truth of each picture
so that a description can be checked exactly.

This file holds, in order:
  1. the picture-book world: scenes drawn with Pillow and described in a young child's words, offline and free;
  2. the tokenizer: GPT-2's BPE (tiktoken r50k_base), compacted to the tokens the training text uses;
  3. preparation: PNGs and texts turned into numpy arrays once, so a training step never decodes an image.

    python data.py                        # the default picture-book dataset in data/picturebook
    python data.py --n_train=20000 --img_size=224
"""
import json
import os
import random
import re

import numpy as np
from PIL import Image, ImageDraw

from model import UserError, parse_flags, run_cli

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
    lo, hi, smin, smax = (20, 25, 2, 3) if style == 'short' else (60, 70, 5, 6)
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


def load_image(path, size):
    """An image file as a (size, size, 3) uint8 array; a missing or unreadable file is a UserError."""
    if not os.path.exists(path):
        raise UserError(f'image {path} does not exist')
    try:
        with Image.open(path) as im:
            im = im.convert('RGB')
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f'cannot read image {path}: {e}')


# -----------------------------------------------------------------------------
# 2. The tokenizer: GPT-2's BPE with a compact vocabulary
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
# 3. Preparation: every split as arrays the training loop can slice without decoding anything
#
#   {split}.images{S}.npy  uint8 (N, S, S, 3)      the pictures at the model's image size S
#   {split}.tokens.npy     uint16 (N, 2, T)        per record, the short and the long text as
#                                                  [<|short|> or <|long|>] text tokens [<|endoftext|>] [<|pad|> ...]
#   vocab.json             the tokenizer, fitted on the training texts

STYLES = ['short', 'long']


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

if __name__ == '__main__':
    def main(argv):
        flags = parse_flags({'out': 'data/picturebook', 'n_train': 12000, 'n_val': 500, 'n_test': 500,
                             'img_size': 64, 'seed': 1337}, argv)
        make_picturebook(flags['out'], flags['n_train'], flags['n_val'], flags['n_test'], flags['img_size'], flags['seed'])
        prepare(flags['out'], flags['img_size'])
    run_cli(main)
