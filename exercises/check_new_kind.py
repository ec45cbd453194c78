"""
Check for exercise 18: a new kind of thing in the picture-book world.

    python -m pytest -q exercises/check_new_kind.py

Any kind in picturebook.KINDS beyond the world's first eleven is checked: it has its place in every table (a row,
a drawing, verbs, wishes, a plural), it is drawn in its slot and in its colour, unlike any other kind, the writer
describes it in both styles with its colour and kind, the reader reads it back as a true fact, and random scenes
hold it.
"""
import os
import random
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import picturebook  # noqa: E402
from picturebook import COLORS, facts, true_of  # noqa: E402

ORIGINAL = {'balloon', 'bird', 'kite', 'ball', 'car', 'cat', 'dog', 'flower', 'house', 'tree', 'umbrella'}
NEW = [k for k in picturebook.KINDS if k not in ORIGINAL]


def test_there_is_a_new_kind():
    assert NEW, f'picturebook.KINDS holds the first eleven kinds only: {picturebook.KINDS}'


def colors_of(kind):
    return picturebook.KIND_COLORS.get(kind, list(COLORS))


def scene_with(kind, color, where='middle', size='big', ground='grass', also=()):
    return {'sky': 'sunny', 'ground': ground,
            'objects': [{'kind': kind, 'color': color, 'size': size, 'where': where}, *also]}


@pytest.mark.parametrize('kind', NEW)
def test_it_has_a_place_in_every_table(kind):
    assert (kind in picturebook.SKY_KINDS) != (kind in picturebook.GROUND_KINDS), 'in the sky row or on the ground'
    assert callable(picturebook.DRAW[kind])
    singular, plural = picturebook.VERBS[kind]
    assert singular and plural and singular != plural
    assert picturebook.WISHES[kind] and all('{t}' in w or '{T}' in w for w in picturebook.WISHES[kind])
    assert picturebook.PLURALS[kind] != kind and picturebook.WORD_KIND[picturebook.PLURALS[kind]] == kind
    assert set(colors_of(kind)) <= set(COLORS)


@pytest.mark.parametrize('kind', NEW)
@pytest.mark.parametrize('where', picturebook.PLACES)
def test_it_is_drawn_in_its_slot(kind, where):
    """The picture with it differs from the same picture without it, and only in its slot: its third of the
    picture, in the sky (above y = 40 of 64) or on the ground (below y = 28)."""
    color = colors_of(kind)[0]
    with_it = np.asarray(picturebook.draw_scene(scene_with(kind, color, where), 64)).astype(int)
    without = np.asarray(picturebook.draw_scene({'sky': 'sunny', 'ground': 'grass', 'objects': []}, 64)).astype(int)
    ys, xs = np.nonzero((with_it != without).any(-1))
    assert len(xs) >= 60, f'only {len(xs)} pixels of a big {kind} at 64 px: draw it bigger'
    cx = 11 + 21 * picturebook.PLACES.index(where)  # where draw_scene centres a thing in this third
    assert xs.min() >= cx - 16 and xs.max() <= cx + 16, f'drawn outside its third: x {xs.min()}..{xs.max()}'
    if kind in picturebook.SKY_KINDS:
        assert ys.max() < 40, f'a sky thing drawn down to y {ys.max()}'
    else:
        assert ys.min() >= 28, f'a ground thing drawn up to y {ys.min()}'


@pytest.mark.parametrize('kind', NEW)
def test_it_is_drawn_in_its_colour_and_unlike_any_other_kind(kind):
    def alone(k, color):  # k drawn by itself, big, where the new kind stands
        img = Image.new('RGB', (64, 64), (128, 128, 128))
        base = 14 + 12 if kind in picturebook.SKY_KINDS else 60
        picturebook.DRAW[k](ImageDraw.Draw(img), 32, base, 24, COLORS[color], 1)
        return np.asarray(img).astype(int)
    colors = colors_of(kind)
    for color in colors:
        pixels = alone(kind, color)
        near = (np.abs(pixels - COLORS[color]).sum(-1) < 60).sum()
        assert near >= 20, f'a {color} {kind} has only {near} pixels of {color}'
    if len(colors) > 1:
        assert (alone(kind, colors[0]) != alone(kind, colors[1])).any(-1).sum() >= 20, 'its colour hardly shows'
    for other in ORIGINAL:
        differ = (alone(kind, colors[0]) != alone(other, colors[0])).any(-1).sum()
        assert differ >= 40, f'a {kind} looks like a {other} ({differ} pixels differ)'


@pytest.mark.parametrize('kind', NEW)
@pytest.mark.parametrize('style', picturebook.STYLES)
def test_it_is_described_and_read_back(kind, style):
    """Alone, beside another thing, and as twins: every description names it with its colour (a fact the reader
    reads), twins with their number, and states nothing false."""
    rng = random.Random(0)
    other = {'kind': 'ball' if kind in picturebook.SKY_KINDS else 'kite', 'color': 'red', 'size': 'small', 'where': 'left'}
    for color in colors_of(kind)[:4]:
        twin = {'kind': kind, 'color': color, 'size': 'small', 'where': 'right'}
        for scene in (scene_with(kind, color), scene_with(kind, color, also=[other]), scene_with(kind, color, also=[twin])):
            for _ in range(5):
                text = picturebook.describe_scene(scene, style, rng)
                said = facts(text)
                assert ('object', color, kind) in said, text
                if len(scene['objects']) == 2 and scene['objects'][1]['kind'] == kind:
                    assert ('count', 2, color, kind) in said, text
                assert all(true_of(f, scene) for f in said), [f for f in said if not true_of(f, scene)]


@pytest.mark.parametrize('kind', NEW)
def test_random_scenes_hold_it(kind):
    """In the book's own pages: scenes with it are drawn (at least ten in 300), and each of their descriptions names
    it and is true."""
    seen = 0
    for split, i, scene, short, long in picturebook.pages([('train', 300)], seed=7):
        for o in scene['objects']:
            if o['kind'] == kind:
                seen += 1
                for text in (short, long):
                    if not all(true_of(f, scene) for f in facts(text)):
                        raise AssertionError(f'a false fact in {text!r} of {scene}')
        if any(o['kind'] == kind for o in scene['objects']):
            for text in (short, long):
                assert any(f[0] == 'object' and f[2] == kind for f in facts(text)), text
    assert seen >= 10, f'{seen} {kind}s in 300 random scenes'
