"""
The picture-book world: simple scenes, drawn with Pillow and described in a young child's words, so that every
claim a description makes is known to be true, and a model's descriptions can be checked exactly.

A scene is a sky, a ground and 1-4 objects a young child knows (a red ball, two white birds), each with a colour,
a size and a place. This file holds, in the order a page of the book is made:
  1. scenes: drawn at random, and kept apart between splits;
  2. drawing: a scene as a picture, every object with a dark outline as in a picture book;
  3. writing: true sentences about the scene, joined into the paper's two styles of description;
  4. reading: the facts a description states, parsed back the way the writer wrote them, and checked against the
     scene (grade.py's grounding judge), so the writer and the reader of this little language sit together.
Nothing here needs torch: a student can draw, write and read the world on its own. data.py turns the pages into a
dataset folder (`python data.py`); a scene is the JSON object every picture-book record keeps in "scene":

    {"sky": "night", "ground": "snow", "objects": [{"kind": "cat", "color": "red", "size": "big", "where": "left"}]}
"""
import json
import random
import re
from itertools import permutations

import numpy as np
from PIL import Image, ImageDraw

# The paper's two styles: ShortDesc (20-25 words, 2-3 sentences) and LongDesc (60-70 words, 5-6 sentences).
# Every dataset follows them; the world writes them here and build.py checks a chat model's replies against them.
STYLES = ['short', 'long']
LENGTHS = {'short': (20, 25, 2, 3), 'long': (60, 70, 5, 6)}  # words from-to, sentences from-to

# -----------------------------------------------------------------------------
# 1. Scenes

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
OBJECT_SIZES = ['small', 'big']
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
        objects.append({'kind': kind, 'color': color, 'size': rng.choice(OBJECT_SIZES), 'where': place})
    objects.sort(key=lambda o: (PLACES.index(o['where']), o['kind'] in GROUND_KINDS))  # left to right, sky first
    return {'sky': rng.choice(SKIES), 'ground': rng.choice(GROUNDS), 'objects': objects}


class Draws(random.Random):
    """random.Random with CPython's sample of a small population written out lean: the same draws, in less time."""
    def sample(self, population, k):  # the writer samples millions of times: 15% of its time saved
        if len(population) > 21 or k > 5:  # CPython samples a bigger population another way
            return super().sample(population, k)
        pool = list(population)
        for i in range(k):  # pick one of those still in reach; it swaps places with the last one in reach
            j = self._randbelow(len(pool) - i)
            pool[j], pool[-1 - i] = pool[-1 - i], pool[j]
        return pool[::-1][:k]


def pages(counts, seed=1337):
    """The book: for each (split, n) of counts in order, n distinct scenes with a short and a long description,
    yielded as (split, i, scene, short, long). Deterministic for a seed; a scene never occurs in two splits (so with
    test drawn first, no test scene is ever trained on)."""
    rng, seen = Draws(seed), set()
    for split, n in counts:
        i = 0
        while i < n:
            scene = random_scene(rng)
            key = json.dumps(scene, sort_keys=True)  # the same key, the same picture: kept out of later splits
            if key in seen:
                continue
            seen.add(key)
            yield split, i, scene, describe_scene(scene, 'short', rng), describe_scene(scene, 'long', rng)
            i += 1


# -----------------------------------------------------------------------------
# 2. Drawing. Coordinates are in a 64x64 design space scaled to the image size; every object has a dark outline,
# as in a picture book, so a green ball on green grass is still a ball.

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


# -----------------------------------------------------------------------------
# 3. Writing. Objects of the same kind and colour are one group ("two red balls"); groups are named left to right.
# Every sentence below is built from the scene, so it is true of the picture; the colour word always stands just
# before the kind, which is what the reader (section 4) relies on.

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
PLACE_PHRASES = {'left': 'on the left', 'middle': 'in the middle', 'right': 'on the right'}  # an object's where, said


def _groups(scene):
    """Objects grouped by (kind, colour), in left-to-right order of their first member."""
    groups = {}
    for o in scene['objects']:
        groups.setdefault((o['kind'], o['color']), []).append(o)
    return list(groups.values())


def _noun_phrase(group, det='a', size=False):
    """Noun phrase for a group: 'a red ball', 'a big red ball' (with its size), 'the red ball', 'two red balls'."""
    kind, color = group[0]['kind'], group[0]['color']
    if len(group) > 1:
        return f"{'the ' if det == 'the' else ''}{NUMBERS[len(group)]} {color} {PLURALS[kind]}"
    article = det if det != 'a' else ('an' if (group[0]['size'] if size else color)[0] in 'aeiou' else 'a')
    return ' '.join([article] + [group[0]['size']] * size + [color, kind])


def _cap(s):
    return s[0].upper() + s[1:]


def _sayings(group, scene):
    """What can be said of a group, made once a scene: a long description takes about twenty tries of sentences
    drawn at random before one fits its length, and each try only picks among these."""
    kind, n, t = group[0]['kind'], len(group), _noun_phrase(group, 'the')
    place = ' and '.join(f"one {PLACE_PHRASES[o['where']]}" for o in group) if n > 1 else PLACE_PHRASES[group[0]['where']]
    return {'kind': kind, 'n': n, 'be': 'are' if n > 1 else 'is', 'verb': VERBS[kind][n > 1], 'the': t,
            'names': [_noun_phrase(group), _noun_phrase(group, size=True)],  # 'a red ball', 'a big red ball'
            'wheres': [place, f'up in the sky {place}'] if n == 1 and kind in SKY_KINDS else [place],
            'wishes': [w.format(t=t, T=_cap(t)) for w in (WISHES[kind] if n == 1 else GROUP_WISHES)],
            'on': [f'{_cap(t)} {VERBS[kind][0]} {on}.' for on in ON_GROUND[scene['ground']]],  # one thing on the ground
            'sizes': f"{_cap(t)} are both {group[0]['size']}." if len({o['size'] for o in group}) == 1 else
                     f'One {kind} is big and one is small.'}  # twins


def _name(s, rng):  # 'a red ball' or, half the time, 'a big red ball'; 'two red balls'
    return s['names'][s['n'] == 1 and rng.random() < 0.5]


def _where(s, rng):  # 'on the left' or, half the time for one thing in the sky, 'up in the sky on the left'
    return s['wheres'][len(s['wheres']) > 1 and rng.random() < 0.5]


def _object_sentence(s, scene, rng):
    """One true sentence that names a group with its colour, and often its place."""
    phrase, where = _name(s, rng), _where(s, rng)
    on = rng.choice(ON_GROUND[scene['ground']]) if s['kind'] in GROUND_KINDS else 'in the sky'
    return rng.choice(['There {be} {p} {w}.', '{P} {verb} {w}.', '{W}, there {be} {p}.', 'I can see {p} {w}.',
                       '{P} {verb} {on}.']).format(be=s['be'], verb=s['verb'], p=phrase, P=_cap(phrase), w=where,
                                                   W=_cap(where), on=on)


def _list_sentence(says, scene, rng):
    """One sentence that names every group, left to right."""
    phrases = [_name(s, rng) for s in says]
    names = phrases[0] if len(phrases) == 1 else ', '.join(phrases[:-1]) + ' and ' + phrases[-1]
    be = 'are' if sum(s['n'] for s in says) > 1 else 'is'
    where = rng.choice(ON_GROUND[scene['ground']]) if all(s['kind'] in GROUND_KINDS for s in says) else 'in the picture'
    return rng.choice([f'There {be} {names} {where}.', f'I can see {names}.', f'{_cap(names)} {be} {where}.',
                       f'This picture shows {names}.'])


def _story_sentences(says, rng):
    """Imaginative lines about what is really there: wishes of one object, or an animal with another thing."""
    return [rng.choice(s['wishes']) for s in says] + [rng.choice(PLAY).format(A=_cap(a['the']), b=b['the'])
                                                       for a, b in permutations(says, 2) if a['n'] == 1 and a['kind'] in ANIMALS]


def _relations(scene):
    """True spatial relations between single objects (above, next to, left of), each as the ways to say it."""
    singles = [g[0] for g in _groups(scene) if len(g) == 1]
    out = []
    for a, b in permutations(singles, 2):
        ta, tb = f"the {a['color']} {a['kind']}", f"the {b['color']} {b['kind']}"
        ia, ib = PLACES.index(a['where']), PLACES.index(b['where'])
        if ia == ib and a['kind'] in SKY_KINDS and b['kind'] in GROUND_KINDS:
            out.append([f'{_cap(ta)} is above {tb}.'])
        elif ib - ia == 1 and (a['kind'] in SKY_KINDS) == (b['kind'] in SKY_KINDS):
            out.append([f'{_cap(ta)} is next to {tb}.', f'{_cap(ta)} is to the left of {tb}.'])
        elif a['size'] != b['size'] and a['kind'] == b['kind']:
            out.append([f"{_cap(ta)} is {'bigger' if a['size'] == 'big' else 'smaller'} than {tb}."])
    return out


def _long_sentences(s, rng):
    """The long style's sentences about one group: its name with size and place, then true detail and a wish."""
    w = [_where(s, rng) for _ in range(3)]  # a place for each way to begin (drawn for all three, as they always were)
    first = rng.choice(['There {be} {name} {w[0]}.', '{Name} {verb} {w[1]}.', '{W2}, I can see {name}.']).format(
        be=s['be'], verb=s['verb'], name=s['names'][1], Name=_cap(s['names'][1]), w=w, W2=_cap(w[2]))
    if s['n'] > 1:
        return [first, s['sizes']] + rng.sample(s['wishes'], 2)
    return [first] + rng.sample(s['wishes'], 2) + ([rng.choice(s['on'])] if s['kind'] in GROUND_KINDS else [])


def _join(a, b):
    """Two sentences as one: 'The sun is out.' + 'The sky is blue.' -> 'The sun is out, and the sky is blue.'
    A second sentence about the same single thing says 'it': 'The cat is small, and it wants a nap.'"""
    subject = ' '.join(a.split(' ', 3)[:3])
    if subject.startswith('The ') and subject.split()[-1] in KINDS and b.startswith(subject + ' '):
        b = 'it' + b[len(subject):]
    return a[:-1] + ', and ' + (b if b.startswith('I ') else b[0].lower() + b[1:])


def word_count(text):
    return len(text.split())


def sentence_count(text):
    return len(re.findall(r'[.!?](\s|$)', text))


def describe_scene(scene, style, rng):
    """A true description of the scene in the given style: short 20-25 words in 2-3 sentences, long 60-70 in 5-6.
    True sentences are drawn at random and joined with 'and' until the length fits, so wording varies."""
    lo, hi, smin, smax = LENGTHS[style]
    says, relations = [_sayings(g, scene) for g in _groups(scene)], _relations(scene)
    moods = MOOD_SENTENCES[scene['sky']] + MOOD_SENTENCES[scene['ground']]
    for attempt in range(5000):
        sky = rng.sample(SKY_SENTENCES[scene['sky']], 2)
        ground = rng.choice(GROUND_SENTENCES[scene['ground']])
        mood = rng.choice(moods)
        story = _story_sentences(says, rng)
        if style == 'short':
            naming = [_list_sentence(says, scene, rng)] if len(says) > 1 or rng.random() < 0.5 else \
                [_object_sentence(says[0], scene, rng)]
            sents = naming + rng.sample([sky[0], ground, mood] + story, rng.randint(1, 2))  # what is there, first
        else:
            about = [x for s in says for x in _long_sentences(s, rng)[:rng.randint(1, 4)]]
            between = [r[0] if len(r) == 1 else rng.choice(r) for r in relations] + [x for x in story if x not in about]
            if len(scene['objects']) == 1:
                between.append(rng.choice(['Nothing else is in the picture.', 'It is all alone in the picture.']))
            rng.shuffle(between)
            sents = sky[:rng.randint(1, 2)] + about + between[:rng.randint(0, 3)] + rng.sample([ground, mood], rng.randint(1, 2))
        words, joins = [word_count(s) for s in sents], max(0, len(sents) - smax)  # a join is a word more ('and'), or
        if sum(words) - joins > hi or sum(words) + joins < lo:  # one fewer ('and it' for 'the red ball'): none fits, so
            for n in range(len(sents), smax, -1):  # skip the joins, but draw what they would (the next try starts there)
                rng.sample(range(n - 1), min(2, n - 1))
            continue
        while len(sents) > smax:  # join a random pair of neighbours, favouring short ones
            i = min(rng.sample(range(len(sents) - 1), min(2, len(sents) - 1)), key=lambda i: words[i] + words[i + 1])
            sents[i:i + 2] = [_join(sents[i], sents[i + 1])]
            words[i:i + 2] = [word_count(sents[i])]
        if lo <= sum(words) <= hi and smin <= sentence_count(' '.join(sents)) <= smax:
            return ' '.join(sents)
    raise RuntimeError(f'no {style} description fits scene {scene}')  # never seen: the sentence pools are wide


# -----------------------------------------------------------------------------
# 4. Reading: the facts a description states, and whether the scene bears them out
#
# Facts are read the way the writer above writes them: a colour word directly before a kind names an object
# ("the red ball", "two blue cars"); a size word before that gives its size ("a big red ball"), a number word its
# count ("two blue cars"). The sky and the ground are read from words the writer uses for one sky or ground only.
# Whatever wrote the text (the writer or a model), this is what it claims about the picture.

WORD_KIND = {**{k: k for k in KINDS}, **{p: k for k, p in PLURALS.items()}}  # 'balls' -> 'ball'
NUMBER_WORDS = {'one': 1, 'two': 2, 'three': 3, 'four': 4}
SKY_WORDS = {
    'sunny': ['sunny', 'sun is shining', 'sun shines', 'sun is out', 'sun is up', 'blue sky', 'bright and blue',
              'sky is blue'],
    'cloudy': ['cloudy', 'gray', 'clouds float', 'clouds cover', 'clouds in the sky', 'behind the clouds'],
    'night': ['it is night', 'moon', 'stars', 'dark', 'time for bed', 'sleepy'],
    'sunset': ['evening', 'going down', 'setting', 'sunset', 'orange and pink', 'glows orange', 'end of the day',
               'almost over', 'will be night'],
}
GROUND_WORDS = {'grass': ['grass'], 'sand': ['sand', 'sandy', 'beach'], 'snow': ['snow', 'cold']}


def facts(text):
    """The facts a text states: ('object', colour, kind), ('size', size, colour, kind), ('count', n, colour, kind),
    ('sky', sky) and ('ground', ground)."""
    out = set()
    for clause in re.split(r'[.!?;:,]', text.lower()):  # a colour ending one clause does not name the next thing
        words = re.findall(r'[a-z]+', clause)
        for i in range(len(words) - 1):
            color, kind = words[i], WORD_KIND.get(words[i + 1])
            if color in COLORS and kind:
                out.add(('object', color, kind))
                before = words[i - 1] if i else ''
                if before in OBJECT_SIZES:
                    out.add(('size', before, color, kind))
                if before in NUMBER_WORDS:
                    out.add(('count', NUMBER_WORDS[before], color, kind))
    flat = ' '.join(re.findall(r'[a-z]+', text.lower()))
    for name, cues in [('sky', SKY_WORDS), ('ground', GROUND_WORDS)]:
        out |= {(name, value) for value, words in cues.items() if any(re.search(rf'\b{w}\b', flat) for w in words)}
    return out


def true_of(fact, scene):
    """Whether the scene bears the fact out: the object is there, with that size, that many of it, that sky."""
    objects = scene['objects']
    if fact[0] == 'object':
        return any((o['color'], o['kind']) == fact[1:] for o in objects)
    if fact[0] == 'size':
        return any((o['size'], o['color'], o['kind']) == fact[1:] for o in objects)
    if fact[0] == 'count':
        return sum((o['color'], o['kind']) == fact[2:] for o in objects) == fact[1]
    return scene[fact[0]] == fact[1]
