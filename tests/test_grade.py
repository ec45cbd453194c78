"""grade.py: mentions, truth and the grounding judge on hand-counted cases."""
import pytest

import grade
from model import UserError


def obj(color, kind, where='left', size='small'):
    return {'kind': kind, 'color': color, 'size': size, 'where': where}


SCENE = {'sky': 'sunny', 'ground': 'grass',
         'objects': [obj('red', 'ball'), obj('blue', 'car', 'middle'), obj('blue', 'car', 'right'), obj('black', 'cat')]}


def test_mentions_colour_directly_before_kind():
    assert grade.mentions('A red ball and two blue cars. The green dog.') == {
        ('red', 'ball'), ('blue', 'car'), ('green', 'dog')}
    assert grade.mentions('A Big RED Balloon floats; three yellow kites fly.') == {('red', 'balloon'), ('yellow', 'kite')}
    assert grade.mentions('The ball is red. A big dog.') == set()  # no colour just before a kind
    assert grade.mentions('a red big ball') == set()
    assert grade.mentions('') == set()


def test_mentions_do_not_cross_sentences():
    """A sentence that ends with a colour and the next that begins with a kind name no colour-kind pair: the
    picture-book writes 'The grass is soft and green. Birds like to rest in the yellow tree.'"""
    assert grade.mentions('The grass is soft and green. Birds like to rest in the yellow tree.') == {('yellow', 'tree')}
    assert grade.mentions('The sky is bright and blue! Cats sleep.') == set()


def test_truth():
    assert grade.truth(SCENE) == {('red', 'ball'), ('blue', 'car'), ('black', 'cat')}


def test_grounding_hand_counted():
    r = grade.grounding([{'id': 'a', 'text': 'A red ball and two blue cars. The green dog.', 'scene': SCENE}])
    assert r['n'] == 1 and r['mentions'] == 3 and r['objects'] == 3
    assert r['precision'] == pytest.approx(2 / 3) and r['recall'] == pytest.approx(2 / 3)


def test_grounding_pools_over_records():
    other = {'sky': 'night', 'ground': 'snow', 'objects': [obj('white', 'house')]}
    records = [{'id': 'a', 'text': 'I can see a red ball.', 'scene': SCENE},           # 1 said, 1 right, 3 there
               {'id': 'b', 'text': 'A white house and a pink kite.', 'scene': other},  # 2 said, 1 right, 1 there
               {'id': 'c', 'text': 'It is night.', 'scene': other}]                    # 0 said, 0 right, 1 there
    r = grade.grounding(records)
    assert (r['n'], r['mentions'], r['objects']) == (3, 3, 5)
    assert r['precision'] == pytest.approx(2 / 3) and r['recall'] == pytest.approx(2 / 5)


def test_grounding_perfect_and_empty():
    perfect = grade.grounding([{'text': 'A red ball, two blue cars and a black cat.', 'scene': SCENE}])
    assert perfect['precision'] == 1.0 and perfect['recall'] == 1.0
    silent = grade.grounding([{'text': 'It is a sunny day.', 'scene': SCENE}])
    assert silent['precision'] == 0.0 and silent['recall'] == 0.0 and silent['mentions'] == 0


def test_grounding_needs_scenes():
    with pytest.raises(UserError, match='scene'):
        grade.grounding([{'id': 'x', 'text': 'A red ball.'}])
