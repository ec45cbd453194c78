"""grade.py: the GPT judge against a real Chat Completions server on 127.0.0.1, and the offline grounding and ROUGE-L
judges on hand-counted cases."""
import json
import math
import os
import random

import numpy as np
import pytest

import chat
import data
import grade
import picturebook
from cli import UserError


# -----------------------------------------------------------------------------
# The GPT judge

@pytest.fixture
def api(api):
    """conftest's server, answering every grading request with a fair grade unless a test says otherwise."""
    api.default = ('content', json.dumps(marks(7, 7, 7, 7, 7)))
    return api


def marks(grammar, consistency, creativity, meaningfulness, plot, **more):
    return {'assessment': 'A simple, clear ending.', 'grammar': grammar, 'consistency': consistency,
            'creativity': creativity, 'meaningfulness': meaningfulness, 'plot': plot, **more}


def samples(path, n, tag):
    records = [{'id': f'{tag}{i}', 'image': 'x.png', 'style': 'short', 'prompt': 'The red ball',
                'text': f'The red ball rolls to the {tag} dog number {i}.'} for i in range(n)]
    data.write_jsonl(str(path), records)
    return str(path)


@pytest.fixture
def gpt(tmp_path, api):
    """run(files, *flags): grade.py --judge=gpt against the local server; returns the JSON results."""
    def run(files, *flags):
        results = tmp_path / 'results.json'
        grade.main([*files, '--judge=gpt', f'--base_url={api.url}/v1', f'--cache={tmp_path / "cache.jsonl"}',
                    '--yes=true', f'--json={results}', *flags])
        return json.loads(results.read_text())
    return run


@pytest.mark.parametrize('model, refuses', [('gpt-4o', {'max_tokens', 'temperature'}), ('o3', {'max_tokens', 'temperature'}),
                                            ('my-local-model', {'max_completion_tokens'})])
def test_reasoning_judges_get_the_body_they_take_and_local_servers_keep_theirs(tmp_path, api, gpt, model, refuses):
    """A judge that answers 400 to max_tokens and temperature as OpenAI's reasoning models do grades 12 texts with
    no failed grade: told once (or knowing the name), the run sends the body it takes, without paying twice; a
    server that knows only max_tokens goes on getting it."""
    api.refuses = refuses
    results = gpt([samples(tmp_path / 'a.jsonl', 12, 'a')], f'--model={model}', '--workers=4')
    assert (results[str(tmp_path / 'a.jsonl')]['n'], results[str(tmp_path / 'a.jsonl')]['failed']) == (12, 0)
    graded = [e['body'] for e in api.log if not set(e['body']) & refuses and e['body'].get('temperature', 1) == 1
              or 'max_completion_tokens' in refuses and 'max_completion_tokens' not in e['body']]
    assert len(graded) == 12  # every text graded once
    turned_down = len(api.log) - len(graded)
    assert turned_down == {'gpt-4o': 2, 'o3': 0, 'my-local-model': 0}[model], api.log  # one 400 per field, once a run
    if 'max_tokens' in refuses:
        assert all(b['max_completion_tokens'] == 600 + chat.REASONING_TOKENS and 'temperature' not in b for b in graded)
    else:
        assert all(b['max_tokens'] == 600 and b['temperature'] == 0 for b in graded)

def test_gpt_table_means_and_intervals_are_as_computed_by_hand(tmp_path, api, gpt, capsys):
    a, b = samples(tmp_path / 'a.jsonl', 3, 'a'), samples(tmp_path / 'b.jsonl', 3, 'b')
    missing_plot = {k: v for k, v in marks(5, 5, 5, 5, 5).items() if k != 'plot'}
    api.script = [('content', json.dumps(marks(8, 7, 5, 9, 6))),
                   ('content', f'```json\n{json.dumps(marks(6, 7, 7, 8, 6))}\n```'),               # fenced
                   ('content', f'Here is my grade:\n{json.dumps(marks(7, 7, 9, 7, 6))}\nWell done.'),  # prose around it
                   ('content', json.dumps(marks(9, 1, 1, 1, 1))),
                   ('content', json.dumps(missing_plot)), ('content', json.dumps(missing_plot)),   # b1 fails twice
                   ('content', json.dumps(marks(10, 1, 1, 1, 1)))]
    results = gpt([a, b], '--workers=1')
    ra, rb = results[a], results[b]
    assert (ra['n'], ra['failed'], rb['n'], rb['failed']) == (3, 0, 2, 1)  # a missing score is a failure, not a zero
    half = 4.303 / math.sqrt(3)  # t(0.975, 2 df) * sd 1 / sqrt(3)
    assert ra['scores']['grammar'] == pytest.approx({'mean': 7.0, 'lo': 7 - half, 'hi': 7 + half})
    assert ra['scores']['creativity'] == pytest.approx({'mean': 7.0, 'lo': 7 - 2 * half, 'hi': 7 + 2 * half})
    assert ra['scores']['consistency'] == pytest.approx({'mean': 7.0, 'lo': 7.0, 'hi': 7.0})
    half_b = 12.706 * math.sqrt(0.5) / math.sqrt(2)  # t(0.975, 1 df) * sd 0.707 / sqrt(2)
    assert rb['scores']['grammar'] == pytest.approx({'mean': 9.5, 'lo': 9.5 - half_b, 'hi': 9.5 + half_b})
    table = capsys.readouterr().out.splitlines()[-3:]
    assert table[0].split() == ['samples', 'n', 'failed', 'grammar', 'consistency', 'creativity', 'meaningfulness', 'plot']
    assert table[1].startswith(a) and '7.00 [4.52, 9.48]' in table[1] and '7.00 [2.03, 11.97]' in table[1]
    assert table[2].startswith(b) and '9.50 [3.15, 15.85]' in table[2] and table[2].split()[1:3] == ['2', '1']
    retry = api.log[5]['body']['messages']  # the failing reply was sent back with what is wrong
    assert retry[-1]['content'].startswith('Not quite: the "plot" score is missing or not a number')


def test_gpt_requests_say_what_the_child_was_given(tmp_path, api, gpt):
    gpt([samples(tmp_path / 'a.jsonl', 1, 'a')])
    body = api.log[0]['body']
    assert body['temperature'] == 0 and body['response_format']['json_schema']['schema']['required'] == \
        ['assessment', 'grammar', 'consistency', 'creativity', 'meaningfulness', 'plot']
    system, user = body['messages']
    assert 'three or four years old' in system['content'] and 'picture:' not in system['content']
    assert user['content'] == [{'type': 'text', 'text': 'The beginning: "The red ball"\n'
                                                        'The child\'s part: "rolls to the a dog number 0."'}]


def test_gpt_with_the_picture_adds_a_sixth_score(tmp_path, api, gpt):
    from PIL import Image
    Image.new('RGB', (40, 40), (200, 0, 0)).save(tmp_path / 'x.png')
    path = samples(tmp_path / 'a.jsonl', 2, 'a')
    data.write_jsonl(path, [r | {'image': str(tmp_path / 'x.png')} for r in data.read_jsonl(path)])
    api.default = ('content', json.dumps(marks(7, 7, 7, 7, 7, picture=4)))
    results = gpt([path], '--with_image=true')
    assert results[path]['scores']['picture']['mean'] == 4.0
    text, image = api.log[0]['body']['messages'][1]['content']
    assert image['image_url']['url'].startswith('data:image/jpeg;base64,')
    assert 'picture' in api.log[0]['body']['response_format']['json_schema']['schema']['required']


def test_a_picture_that_cannot_be_read_is_a_failed_grade_not_the_end_of_the_run(tmp_path, api, gpt):
    from PIL import Image
    Image.new('RGB', (40, 40), (200, 0, 0)).save(tmp_path / 'x.png')
    path = samples(tmp_path / 'a.jsonl', 3, 'a')
    data.write_jsonl(path, [r | {'image': str(tmp_path / ('x.png' if i != 1 else 'gone.png'))}
                            for i, r in enumerate(data.read_jsonl(path))])
    api.default = ('content', json.dumps(marks(7, 7, 7, 7, 7, picture=4)))
    results = gpt([path], '--with_image=true', '--workers=1')
    assert results[path]['n'] == 2 and results[path]['failed'] == 1 and len(api.log) == 2
    failed = [r for r in data.read_log(str(tmp_path / 'cache.jsonl')) if 'failed' in r]
    assert len(failed) == 1 and failed[0]['failed'] == f"image {tmp_path / 'gone.png'} does not exist"


def test_gpt_retries_429_5xx_and_timeouts(tmp_path, api, gpt):
    api.script = [('429', 1), '500', '503', ('sleep', 2.0)]
    results = gpt([samples(tmp_path / 'a.jsonl', 3, 'a')], '--workers=1', '--timeout=0.5')
    assert results[str(tmp_path / 'a.jsonl')]['n'] == 3 and len(api.log) == 3 + 4
    assert api.log[1]['time'] - api.log[0]['time'] >= 1.0  # Retry-After, not the 0.01 s backoff


def test_the_cache_makes_a_rerun_free(tmp_path, api, gpt, capsys):
    a = samples(tmp_path / 'a.jsonl', 4, 'a')
    first = gpt([a])
    assert len(api.log) == 4
    assert gpt([a]) == first and len(api.log) == 4  # no request at all
    assert 'all 4 grades are in' in capsys.readouterr().out
    records = data.read_jsonl(a)
    records[0]['text'] += ' It is happy.'  # a changed text is a new grade; the rest stay cached
    data.write_jsonl(a, records)
    gpt([a])
    assert len(api.log) == 5


def test_a_failed_grade_is_asked_again_on_the_next_run(tmp_path, api, gpt):
    a = samples(tmp_path / 'a.jsonl', 2, 'a')
    api.script = [('content', json.dumps(marks(7, 7, 7, 7, 7))), ('content', 'no JSON here'), ('content', 'nor here')]
    assert gpt([a], '--workers=1')[a]['failed'] == 1
    result = gpt([a], '--workers=1')
    assert result[a]['failed'] == 0 and result[a]['n'] == 2 and len(api.log) == 4


def test_gpt_invalid_key_stops_at_once(tmp_path, api, gpt, monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-wrong')
    with pytest.raises(UserError, match='refused the API key'):
        gpt([samples(tmp_path / 'a.jsonl', 5, 'a')])
    assert len(api.log) == 1


def test_check_grade():
    names = grade.SCORES
    assert grade.check_grade(json.dumps(marks(1, 2, 3, 4, 10)), names) == (dict(zip(names, [1, 2, 3, 4, 10])), None)
    assert grade.check_grade(json.dumps(marks('7', '8/10', 3, 4, 5)), names)[0]['consistency'] == 8.0
    for bad, problem in [(marks(0, 2, 3, 4, 5), 'scores go from 1 to 10'), (marks(11, 2, 3, 4, 5), 'is 11'),
                         (marks(True, 2, 3, 4, 5), '"grammar" score is missing'),
                         (marks(None, 2, 3, 4, 5), '"grammar" score is missing'),
                         (marks('good', 2, 3, 4, 5), '"grammar" score is missing')]:
        scores, why = grade.check_grade(json.dumps(bad), names)
        assert scores is None and problem in why
    assert 'not the JSON object' in grade.check_grade('I would give it a 7.', names)[1]


def test_t_quantiles_and_intervals():
    assert grade.t975(1) == 12.706 and grade.t975(24) == 2.064
    for df, t in [(31, 2.0395), (60, 2.0003), (120, 1.9799), (1000, 1.9623)]:
        assert grade.t975(df) == pytest.approx(t, abs=2e-4)
    assert grade.mean_ci([4.0]) == {'mean': 4.0, 'lo': None, 'hi': None}
    assert grade.mean_ci([]) == {'mean': None, 'lo': None, 'hi': None}


# -----------------------------------------------------------------------------
# The grounding judge

def obj(color, kind, where='left', size='small'):
    return {'kind': kind, 'color': color, 'size': size, 'where': where}


SCENE = {'sky': 'sunny', 'ground': 'grass',
         'objects': [obj('red', 'ball'), obj('blue', 'car', 'middle'), obj('blue', 'car', 'right'), obj('black', 'cat')]}
NIGHT = {'sky': 'night', 'ground': 'snow', 'objects': [obj('yellow', 'kite', 'left', 'big'), obj('brown', 'dog', 'right')]}
NIGHT_TEXT = 'There are a big yellow kite and a small brown dog in the picture. It is night and the moon is bright. ' \
             'Snow covers the ground.'


def test_facts_a_text_states():
    assert picturebook.facts(NIGHT_TEXT) == {('object', 'yellow', 'kite'), ('size', 'big', 'yellow', 'kite'),
                                       ('object', 'brown', 'dog'), ('size', 'small', 'brown', 'dog'),
                                       ('sky', 'night'), ('ground', 'snow')}
    assert picturebook.facts('Two blue cars; three yellow kites fly.') == {
        ('object', 'blue', 'car'), ('count', 2, 'blue', 'car'), ('object', 'yellow', 'kite'), ('count', 3, 'yellow', 'kite')}
    assert picturebook.facts('The ball is red. A big dog. A red big ball.') == set()  # no colour just before a kind
    # A colour ending one sentence does not name the next thing: "...soft and green. Birds like..."
    assert picturebook.facts('The grass is soft and green. Birds like to rest in the yellow tree.') == {
        ('object', 'yellow', 'tree'), ('ground', 'grass')}
    assert picturebook.facts('The red balloon is going up to the clouds.') == {('object', 'red', 'balloon')}  # not "cloudy"


def test_grounding_hand_counted():
    true = grade.grounding([{'text': NIGHT_TEXT, 'scene': NIGHT}])
    assert (true['facts'], true['true'], true['objects'], true['named']) == (6, 6, 2, 2)
    assert true['scores']['precision']['mean'] == 1.0 and true['scores']['recall']['mean'] == 1.0
    # One wrong colour: the kite's object and size facts are false, and the yellow kite is no longer named.
    wrong = grade.grounding([{'text': NIGHT_TEXT.replace('yellow', 'green'), 'scene': NIGHT}])
    assert (wrong['facts'], wrong['true'], wrong['named']) == (6, 4, 1)
    assert wrong['scores']['precision']['mean'] == pytest.approx(4 / 6) and wrong['scores']['recall']['mean'] == 0.5
    # One invented object: one more fact, and it is false; recall is untouched.
    invented = grade.grounding([{'text': NIGHT_TEXT + ' A red cat sleeps.', 'scene': NIGHT}])
    assert (invented['facts'], invented['true'], invented['named']) == (7, 6, 2)
    assert invented['scores']['precision']['mean'] == pytest.approx(6 / 7) and invented['scores']['recall']['mean'] == 1.0
    # Size, count and sky: a big red ball (it is small), two blue cars (right), a green dog (none), sunny (right).
    mixed = grade.grounding([{'text': 'A big red ball and two blue cars. The green dog. It is a sunny day.', 'scene': SCENE}])
    assert (mixed['facts'], mixed['true'], mixed['objects'], mixed['named']) == (6, 4, 3, 2)


def test_grounding_pools_over_texts_and_resamples_them_for_the_interval():
    records = [{'id': 'a', 'text': 'I can see a red ball.', 'scene': SCENE},                  # 1 fact, 1 true; 1 of 3 named
               {'id': 'b', 'text': 'A brown dog and a pink kite.', 'scene': NIGHT},           # 2 facts, 1 true; 1 of 2
               {'id': 'c', 'text': 'It is night.', 'scene': NIGHT}]                           # 1 fact, 1 true; 0 of 2
    r = grade.grounding(records)
    assert (r['n'], r['facts'], r['true'], r['objects'], r['named']) == (3, 4, 3, 7, 2)
    p = r['scores']['precision']
    assert p['mean'] == pytest.approx(3 / 4) and p['lo'] <= p['mean'] <= p['hi'] and p == grade.grounding(records)['scores']['precision']
    assert r['scores']['recall']['mean'] == pytest.approx(2 / 7)


def test_the_datasets_own_descriptions_are_fully_grounded(picturebook_dir):
    records = [{'text': r[s], 'scene': r['scene']} for r in data.read_jsonl(os.path.join(picturebook_dir, 'train.jsonl'))
               for s in data.STYLES]
    r = grade.grounding(records)
    assert r['scores']['precision'] == {'mean': 1.0, 'lo': 1.0, 'hi': 1.0} and r['scores']['recall']['mean'] == 1.0
    # (test_data.py checks the same of 400 freshly drawn scenes)


def test_grounding_needs_scenes():
    with pytest.raises(UserError, match='scene'):
        grade.grounding([{'id': 'x', 'text': 'A red ball.'}])


# -----------------------------------------------------------------------------
# ROUGE-L and the memorisation check

def test_rouge_l_by_hand():
    w = grade.words
    assert grade.lcs(w('the cat sat on the mat'), w('the cat is on the mat')) == 5
    assert grade.rouge_l(w('the cat sat on the mat'), w('the cat is on the mat')) == pytest.approx((5 / 6, 5 / 6, 5 / 6))
    assert grade.rouge_l(w('police killed the gunman'), w('police kill the gunman')) == pytest.approx((3 / 4, 3 / 4, 3 / 4))
    assert grade.rouge_l(w('a b c d'), w('b d e')) == pytest.approx((1 / 2, 2 / 3, 4 / 7))  # F1 = 2PR / (P + R)
    assert grade.rouge_l(w('x y'), w('a b')) == (0.0, 0.0, 0.0) and grade.rouge_l([], w('a')) == (0.0, 0.0, 0.0)
    assert w("The dog's ball, RED!") == ["the", "dog's", 'ball', 'red']


def test_nearest_training_text_is_the_best_of_all():
    rng = random.Random(0)
    vocab = 'a the red blue ball dog cat runs sits is on in sky grass big small'.split()
    texts = [' '.join(rng.choices(vocab, k=rng.randint(3, 15))) for _ in range(300)]
    index = grade.TrainingText(texts)
    for _ in range(50):
        candidate = rng.choices(vocab, k=rng.randint(1, 12))
        p, r, f, i = index.nearest(candidate)
        best = max(grade.rouge_l(candidate, grade.words(t))[2] for t in texts)
        assert f == pytest.approx(best) and grade.rouge_l(candidate, index.texts[i]) == pytest.approx((p, r, f))
    assert grade.TrainingText(['a b']).nearest(['z']) == (0.0, 0.0, 0.0, -1)


def test_rouge_flags_a_copied_training_description():
    train = [{'short': 'There is a red ball on the grass. The red ball is ready for a game.', 'long': 'x'},
             {'short': 'A blue car is parked on the sand. It is a sunny day.', 'long': 'y'}]
    samples = [{'style': 'short', 'prompt': '', 'text': 'There is a red ball on the grass. The red ball is ready for a game.'},
               {'style': 'short', 'prompt': 'A blue car', 'text': 'A blue car is parked on the snow.'},
               {'style': 'short', 'prompt': '', 'text': 'Something else entirely, new.'}]
    r = grade.rouge(samples, grade.training_index(train))
    assert r['n'] == 3 and r['copied'] == 1
    # completions: all 15 words of a training text (1, 1, 1); "is parked on the snow" against the blue car's 13 words
    # (LCS 4: is parked on the): (4/5, 4/13); nothing shared (0, 0).
    p2, r2 = 4 / 5, 4 / 13
    assert r['scores']['precision']['mean'] == pytest.approx((1 + p2 + 0) / 3)
    assert r['scores']['recall']['mean'] == pytest.approx((1 + r2 + 0) / 3)
    assert r['scores']['f1']['mean'] == pytest.approx((1 + 2 * p2 * r2 / (p2 + r2) + 0) / 3)


def test_grade_cli_rouge_finds_the_training_text(trained, run_script, tmp_path):
    out = str(tmp_path / 's.jsonl')
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl', f'--out={out}',
                   '--task=complete', '--n=4', '--max_new_tokens=30')
    assert p.returncode == 0, p.stderr
    p = run_script('grade.py', out, '--judge=rouge', f'--json={tmp_path / "r.json"}')
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].split() == ['samples', 'n', 'copied', 'precision', 'recall', 'f1']
    train = data.read_jsonl(os.path.join(trained.data_dir, 'train.jsonl'))
    expected = grade.rouge(data.read_jsonl(out), grade.training_index(train))
    assert json.loads((tmp_path / 'r.json').read_text())[out] == json.loads(json.dumps(expected))
    assert np.isfinite(expected['scores']['f1']['mean'])


@pytest.mark.parametrize('args, words', [
    (['--judge=gpt'], 'name at least one samples JSONL file'),
    (['S', '--judge=vibes'], "unknown judge 'vibes'"),
    (['S', '--judge=rouge', '--train=/no/such.jsonl'], '/no/such.jsonl does not exist'),
    (['/no/such.jsonl'], '/no/such.jsonl does not exist'),
])
def test_grade_cli_errors(run_main, tmp_path, args, words):
    path = str(tmp_path / 's.jsonl')
    data.write_jsonl(path, [{'id': 'a', 'text': 'A red ball.', 'style': 'short'}])
    p = run_main('grade.py', *[path if a == 'S' else a for a in args])
    assert p.returncode == 1 and words in p.stderr and 'Traceback' not in p.stderr, p.stderr
