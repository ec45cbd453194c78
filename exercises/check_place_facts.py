"""
Check for exercise 17: the judge reads where things are.

    python -m pytest -q exercises/check_place_facts.py

picturebook.facts(text) should also give ('place', where, colour, kind) for "<colour> <kind> ... on the left / in
the middle / on the right" as the writer puts it, and picturebook.true_of should say whether an object of that
colour and kind is at that place. Hand cases first, then a sweep over freshly written descriptions: every place
the reader reads is true, and it reads the place of (nearly) every object the text places.
"""
import os
import random
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import picturebook  # noqa: E402
from picturebook import facts, true_of  # noqa: E402


def places(text):
    return {f for f in facts(text) if f[0] == 'place'}


@pytest.mark.parametrize('text, expected', [
    ('There is a red ball on the left.', {('left', 'red', 'ball')}),
    ('A big blue car is parked in the middle.', {('middle', 'blue', 'car')}),
    ('I can see a small white bird up in the sky on the right.', {('right', 'white', 'bird')}),
    ('On the left, there is a red ball.', {('left', 'red', 'ball')}),  # the place first, in a clause of its own
    ('Up in the sky on the right, I can see a big pink kite.', {('right', 'pink', 'kite')}),
    ('The sky is dark, and in the middle, I can see a green tree.', {('middle', 'green', 'tree')}),
    ('There are two red balls one on the left and one in the middle.', {('left', 'red', 'ball'), ('middle', 'red', 'ball')}),
    ('One on the left and one on the right, I can see two yellow kites.', {('left', 'yellow', 'kite'), ('right', 'yellow', 'kite')}),
    ('A red cat sits on the left, and a blue dog stands on the right.', {('left', 'red', 'cat'), ('right', 'blue', 'dog')}),
    ('I can see a red ball on the left and a blue car on the right.', {('left', 'red', 'ball'), ('right', 'blue', 'car')}),
])
def test_places_read_by_hand(text, expected):
    assert places(text) == {('place', *e) for e in expected}


@pytest.mark.parametrize('text', [
    'The red ball is to the left of the blue car.',  # a relation between two things, not a place in the picture
    'A red ball lies on the green grass.',
    'There are a red ball and a blue car on the sand.',
    'The ball is on the left.',  # no colour: no object is named, so no place of one
    'On the left. The sun is shining.',
    'The sun is on the left, and a red ball lies on the sand.',  # the sun's place is not the ball's
])
def test_no_place_where_none_is_stated(text):
    assert places(text) == set()


def test_the_other_facts_are_still_read():
    assert facts('There is a big red ball on the left.') >= {('object', 'red', 'ball'), ('size', 'big', 'red', 'ball')}
    assert facts('There are two blue cars one on the left and one on the right.') >= {('count', 2, 'blue', 'car')}


def test_true_of_a_place():
    scene = {'sky': 'sunny', 'ground': 'grass', 'objects': [
        {'kind': 'ball', 'color': 'red', 'size': 'big', 'where': 'left'},
        {'kind': 'ball', 'color': 'red', 'size': 'small', 'where': 'middle'},
        {'kind': 'kite', 'color': 'blue', 'size': 'big', 'where': 'right'}]}
    assert true_of(('place', 'left', 'red', 'ball'), scene)
    assert true_of(('place', 'middle', 'red', 'ball'), scene)
    assert not true_of(('place', 'right', 'red', 'ball'), scene)  # no red ball there
    assert not true_of(('place', 'left', 'blue', 'ball'), scene)  # something is on the left, but not a blue ball
    assert true_of(('place', 'right', 'blue', 'kite'), scene)
    assert not true_of(('place', 'left', 'blue', 'kite'), scene)


PLACE_WORDS = re.compile(r'\b(on the left|in the middle|on the right)\b')


def test_sweep_over_fresh_descriptions():
    """300 scenes, each described in both styles: every place read is true, and places are read for nearly every
    object the writer placed (each 'on the left', 'in the middle' or 'on the right' the writer writes places one
    object; the writer never says a place twice for the same object in one text)."""
    rng = random.Random(2024)
    read, written, wrong = 0, 0, []
    for _ in range(300):
        scene = picturebook.random_scene(rng)
        for style in ('short', 'long'):
            text = picturebook.describe_scene(scene, style, rng)
            found = places(text)
            wrong += [(f, text) for f in found if not true_of(f, scene)]
            read += len(found)
            written += len(PLACE_WORDS.findall(text.lower()))
    assert not wrong, f'{len(wrong)} false places, e.g. {wrong[0]}'
    assert written > 300  # the sweep is not empty
    assert read >= 0.95 * written, f'{read} places read of the {written} the writer wrote'
