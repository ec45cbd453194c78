"""
Building datasets from photos (build.py --dataset=coco|folder|jsonl) against real HTTP servers on 127.0.0.1: a COCO
file server and a Chat Completions endpoint that plays scripted replies and faults (tests/servers.py).
"""
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from PIL import Image

import build
import chat
import data
from cli import UserError
from conftest import KEY
from servers import LONG, SHORT, coco_server, descriptions


@pytest.fixture
def coco():
    server = coco_server()
    yield server
    server.close()


def build_coco(out, coco, api, *flags, n=8, n_test=2):
    build.main(['--dataset=coco', f'--n={n}', f'--n_test={n_test}', f'--out={out}', f'--coco_url={coco.url}',
               f'--base_url={api.url}/v1', '--yes=true', '--workers=3', *flags])


def splits(out):
    return {s: data.read_jsonl(os.path.join(out, f'{s}.jsonl')) for s in ('train', 'val', 'test')}


def chat_requests(api):
    return [e for e in api.log if e['key'] == KEY]


# -----------------------------------------------------------------------------
# COCO, the happy path

def test_coco_build_writes_the_dataset_format(tmp_path, coco, api):
    out = str(tmp_path / 'coco')
    build_coco(out, coco, api)
    got = splits(out)
    assert [len(got[s]) for s in ('train', 'val', 'test')] == [7, 1, 2]  # 90/10 of n=8, plus 2 test images
    for r in sum(got.values(), []):
        assert r['short'] == SHORT and r['long'] == LONG and len(r['captions']) == 5
        assert data.load_image(os.path.join(out, r['image']), 32).shape == (32, 32, 3)
        assert 'usage' not in r and 'split' not in r
    for r in got['test']:  # the paper's completion task: the beginnings of both descriptions
        assert 6 <= len(r['prompts']['short'].split()) <= 7 and r['short'].startswith(r['prompts']['short'])
        assert 18 <= len(r['prompts']['long'].split()) <= 20 and r['long'].startswith(r['prompts']['long'])
    # Only the chosen images were downloaded, each once, never one with fewer than five captions (ids 17-19).
    fetched = [p for p, _ in coco.log if p.startswith('/train2017/')]
    chosen = {f"/train2017/{os.path.basename(r['image'])}" for r in sum(got.values(), [])}
    assert sorted(fetched) == sorted(chosen) and len(fetched) == 10
    assert all(int(os.path.basename(p)[:-4]) <= 16 for p in fetched)
    # One request per image, asking for the JSON schema, with the five captions and no picture.
    requests = chat_requests(api)
    assert len(requests) == 10
    for e in requests:
        assert e['body']['model'] == 'gpt-4o' and e['body']['response_format']['type'] == 'json_schema'
        system, user = e['body']['messages']
        assert 'three or four years old' in system['content']
        assert [p['type'] for p in user['content']] == ['text'] and user['content'][0]['text'].count('\n- A dog number') == 5
    log = data.read_log(os.path.join(out, 'build.jsonl'))
    assert len(log) == 10 and all(r['usage'] == {'prompt_tokens': 100, 'completion_tokens': 50} for r in log)
    for root, _, names in os.walk(out):  # the key is never written anywhere
        for name in names:
            with open(os.path.join(root, name), 'rb') as f:
                assert KEY.encode() not in f.read()


def test_coco_pick_is_deterministic_for_a_seed(tmp_path, coco, api):
    ids = {}
    for name, seed in [('a', 1), ('b', 1), ('c', 2)]:
        build_coco(str(tmp_path / name), coco, api, f'--seed={seed}')
        ids[name] = {s: [r['id'] for r in rs] for s, rs in splits(str(tmp_path / name)).items()}
    assert ids['a'] == ids['b'] and ids['a'] != ids['c']


def test_coco_with_image_sends_the_picture_too(tmp_path, coco, api):
    build_coco(str(tmp_path / 'coco'), coco, api, '--with_image=true', n=2, n_test=0)
    for e in chat_requests(api):
        text, image = e['body']['messages'][1]['content']
        assert 'Five people' in text['text'] and image['image_url']['url'].startswith('data:image/jpeg;base64,')


# -----------------------------------------------------------------------------
# Network faults

def test_429_waits_as_long_as_retry_after_says(tmp_path, coco, api):
    api.script = [('429', 1)]
    build_coco(str(tmp_path / 'coco'), coco, api, n=2, n_test=1)
    requests = chat_requests(api)
    assert len(requests) == 4 and requests[1]['time'] - requests[0]['time'] >= 1.0  # BACKOFF alone would be 0.01 s
    assert sum(map(len, splits(str(tmp_path / 'coco')).values())) == 3


def test_5xx_is_retried_until_it_succeeds(tmp_path, coco, api):
    api.script = ['500', '503', 'broken']  # 'broken': a 200 whose body is not a Chat Completions response
    build_coco(str(tmp_path / 'coco'), coco, api, n=2, n_test=1)
    assert len(chat_requests(api)) == 3 + 3
    assert sum(map(len, splits(str(tmp_path / 'coco')).values())) == 3


def test_a_timeout_is_bounded_and_retried(tmp_path, coco, api):
    api.script = [('sleep', 2.0)]
    t = time.time()
    build_coco(str(tmp_path / 'coco'), coco, api, '--timeout=0.3', n=2, n_test=1)
    assert time.time() - t < 1.9  # did not wait for the slow reply
    assert len(chat_requests(api)) == 4
    assert sum(map(len, splits(str(tmp_path / 'coco')).values())) == 3


def test_a_server_that_stays_down_stops_the_run_with_work_saved(tmp_path, coco, api):
    api.script = ['good', '503', '503', '503']
    with pytest.raises(UserError, match='3 times in a row; finished work is saved: run the same command again'):
        build_coco(str(tmp_path / 'coco'), coco, api, '--max_retries=2', '--workers=1', n=3, n_test=0)
    assert len(data.read_log(str(tmp_path / 'coco' / 'build.jsonl'))) == 1
    build_coco(str(tmp_path / 'coco'), coco, api, '--max_retries=2', '--workers=1', n=3, n_test=0)  # goes on
    assert len(data.read_log(str(tmp_path / 'coco' / 'build.jsonl'))) == 3


@pytest.mark.parametrize('reply', ['fenced', 'prose'])
def test_json_in_a_fence_or_in_prose_is_accepted(tmp_path, coco, api, reply):
    api.script = [reply]
    build_coco(str(tmp_path / 'coco'), coco, api, n=2, n_test=0)
    assert len(chat_requests(api)) == 2 and len(splits(str(tmp_path / 'coco'))['train']) == 1


def test_a_malformed_reply_is_sent_back_with_what_is_wrong(tmp_path, coco, api):
    api.script = ['malformed']
    build_coco(str(tmp_path / 'coco'), coco, api, n=2, n_test=0)
    first, retry = chat_requests(api)[:2]
    assert retry['body']['messages'][:2] == first['body']['messages']
    assert retry['body']['messages'][2]['role'] == 'assistant'
    assert retry['body']['messages'][3]['content'].startswith('Not quite: the reply is not the JSON object asked for')
    assert sum(map(len, splits(str(tmp_path / 'coco')).values())) == 2


def test_too_long_descriptions_are_retried_then_skipped(tmp_path, coco, api):
    out = str(tmp_path / 'coco')
    api.script = ['long', 'long', 'long']  # the first image: three replies, each with a 48-word short description
    build_coco(out, coco, api, '--max_attempts=3', n=3, n_test=0)
    assert len(chat_requests(api)) == 3 + 2
    assert 'Not quite: the short description has 48 words; it must have 20 to 25' in \
        chat_requests(api)[2]['body']['messages'][-1]['content']
    log = data.read_log(os.path.join(out, 'build.jsonl'))
    skipped = [r for r in log if 'skipped' in r]
    assert len(skipped) == 1 and '3 replies broke the rules' in skipped[0]['skipped'] and 'has 48 words' in skipped[0]['skipped']
    assert skipped[0]['usage'] == {'prompt_tokens': 300, 'completion_tokens': 150}
    assert skipped[0]['id'] not in [r['id'] for r in sum(splits(out).values(), [])]
    assert sum(map(len, splits(out).values())) == 2
    build_coco(out, coco, api, '--max_attempts=3', n=3, n_test=0)  # a rerun asks again for nothing
    assert len(chat_requests(api)) == 5


def test_an_invalid_key_stops_at_the_first_request(tmp_path, coco, api, monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-wrong-key-999')  # the server echoes it back in its error message
    with pytest.raises(UserError) as e:
        build_coco(str(tmp_path / 'coco'), coco, api, '--workers=4')
    assert 'refused the API key' in str(e.value) and 'OPENAI_API_KEY' in str(e.value)
    assert 'sk-wrong-key-999' not in str(e.value)
    assert len(api.log) == 1  # not one request per worker, nor per image
    assert data.read_log(str(tmp_path / 'coco' / 'build.jsonl')) == []


def test_no_quota_stops_the_run(tmp_path, coco, api):
    api.script = ['good', 'quota']
    with pytest.raises(UserError, match='no quota left'):
        build_coco(str(tmp_path / 'coco'), coco, api, '--workers=1')
    assert len(api.log) == 2 and len(data.read_log(str(tmp_path / 'coco' / 'build.jsonl'))) == 1


def test_a_request_the_server_turns_down_skips_that_image_or_stops_if_it_is_the_first(tmp_path, coco, api):
    api.script = ['400']
    with pytest.raises(UserError, match='turned down the first request'):
        build_coco(str(tmp_path / 'a'), coco, api, n=2, n_test=0)
    api.script = ['good', '400', 'refusal']
    build_coco(str(tmp_path / 'b'), coco, api, '--workers=1', n=3, n_test=0)
    log = data.read_log(str(tmp_path / 'b' / 'build.jsonl'))
    assert [r.get('skipped', '')[:34] for r in log] == ['', 'the server turned the request down', 'the server turned the request down']
    assert 'HTTP 400' in log[1]['skipped'] and "the model refused: I'm sorry" in log[2]['skipped']


# -----------------------------------------------------------------------------
# Interrupted runs lose and duplicate nothing

def test_interrupting_and_rerunning_loses_and_duplicates_nothing(tmp_path, coco, api):
    api.delay = 0.2
    out = str(tmp_path / 'coco')
    argv = [sys.executable, 'build.py', '--dataset=coco', '--n=10', '--n_test=2', f'--out={out}', f'--coco_url={coco.url}',
            f'--base_url={api.url}/v1', '--yes=true', '--workers=2']
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Ctrl-C's default meaning even where this test runs in the background (a shell has its background jobs ignore
    # SIGINT, and Python then never turns it into KeyboardInterrupt)
    p = subprocess.Popen(argv, cwd=root, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log_path = os.path.join(out, 'build.jsonl')
    deadline = time.time() + 60
    while time.time() < deadline and len(data.read_log(log_path)) < 3:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'interrupted' in err
    partial = data.read_log(log_path)
    assert 3 <= len(partial) < 12 and not os.path.exists(os.path.join(out, 'train.jsonl'))
    api.delay = 0.0
    build_coco(out, coco, api, n=10, n_test=2)
    ids = [r['id'] for r in data.read_log(log_path)]
    assert len(ids) == len(set(ids)) == 12 and set(ids) >= {r['id'] for r in partial}
    assert len(chat_requests(api)) == 12  # the requests in flight at Ctrl-C finished and were kept
    assert sorted(r['id'] for r in sum(splits(out).values(), [])) == sorted(ids)


def test_a_line_cut_short_by_a_killed_run_is_dropped(tmp_path):
    path = str(tmp_path / 'build.jsonl')
    with open(path, 'w') as f:
        f.write(json.dumps({'id': 'a'}) + '\n' + '{"id": "b", "sho')
    assert data.read_log(path) == [{'id': 'a'}]
    with open(path) as f:
        assert f.read() == '{"id": "a"}\n'  # the next append starts on a line of its own


def test_downloads_resume_and_are_verified(tmp_path, coco, api):
    out = tmp_path / 'coco'
    out.mkdir()
    zip_bytes = coco.files['/annotations/annotations_trainval2017.zip']
    (out / 'annotations_trainval2017.zip.part').write_bytes(zip_bytes[:1000])  # an earlier run got this far
    coco.cut.add('/annotations/annotations_trainval2017.zip')  # and this time the connection drops half-way
    coco.cut.update(f'/train2017/{i:012d}.jpg' for i in range(1, 17))  # as it does for every image, once
    build_coco(str(out), coco, api, n=2, n_test=0)
    zip_ranges = [rng for p, rng in coco.log if p == '/annotations/annotations_trainval2017.zip']
    assert len(zip_ranges) == 2 and zip_ranges[0] == 'bytes=1000-' and int(zip_ranges[1][6:-1]) > 1000
    assert (out / 'annotations_trainval2017.zip').read_bytes() == zip_bytes
    for r in splits(str(out))['train'] + splits(str(out))['val']:
        path = '/train2017/' + os.path.basename(r['image'])
        assert [p for p, _ in coco.log].count(path) == 2  # cut, then whole
        assert (out / r['image']).read_bytes() == coco.files[path]
    assert not list(out.glob('**/*.part'))


def test_a_missing_image_is_not_fatal(tmp_path, coco, api):
    del coco.files['/train2017/000000000001.jpg'], coco.files['/train2017/000000000002.jpg']
    build_coco(str(tmp_path / 'coco'), coco, api, n=16, n_test=0)
    assert len(chat_requests(api)) == 14 and sum(map(len, splits(str(tmp_path / 'coco')).values())) == 14


# -----------------------------------------------------------------------------
# Spending only when the user agrees

def test_the_estimate_comes_first_and_nothing_is_sent_without_yes(tmp_path, coco, api, run_script):
    p = run_script('build.py', '--dataset=coco', '--n=8', '--n_test=2', f'--out={tmp_path / "coco"}',
                   f'--coco_url={coco.url}', f'--base_url={api.url}/v1')
    assert p.returncode == 1 and p.stderr.strip() == 'error: add --yes to start without being asked'
    assert '10 requests to gpt-4o' in p.stdout and 'at $2.5 in and $10 out per million tokens' in p.stdout
    assert api.log == []


def test_declining_sends_nothing_and_an_unknown_price_is_said(tmp_path, coco, api, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'stdin', SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr('builtins.input', lambda prompt: 'n')
    build.main(['--dataset=coco', '--n=4', '--n_test=0', f'--out={tmp_path / "coco"}', f'--coco_url={coco.url}',
               f'--base_url={api.url}/v1', '--model=my-local-model'])
    printed = capsys.readouterr().out
    assert 'cost unknown: no price for my-local-model' in printed and 'nothing was sent' in printed
    assert api.log == []


def test_the_estimate_follows_the_prices():
    c = SimpleNamespace(model='gpt-4o', base_url='u', price_in=1.0, price_out=2.0, batch=False)
    text = chat.estimate(['x' * 400] * 1000, False, 170, c)  # 100 tokens in, 170 out, 10% retried
    assert text == f'1,000 requests to gpt-4o at u: about 0.11M input and 0.19M output tokens, about ' \
                   f'${(1.1 * 1000 * 100 * 1.0 + 1.1 * 1000 * 170 * 2.0) / 1e6:,.2f} at $1 in and $2 out per million tokens'
    assert '0.20M input' in chat.estimate(['x' * 400] * 1000, True, 170, c)  # and 85 more a picture


def test_no_key_for_openai_is_one_clear_line(tmp_path, coco, run_script):
    env_key = os.environ.pop('OPENAI_API_KEY', None)
    try:
        p = run_script('build.py', '--dataset=coco', '--n=4', '--n_test=0', f'--out={tmp_path / "coco"}',
                       f'--coco_url={coco.url}', '--yes=true')
    finally:
        if env_key is not None:
            os.environ['OPENAI_API_KEY'] = env_key
    assert p.returncode == 1 and p.stderr.strip().startswith('error: set OPENAI_API_KEY') and 'Traceback' not in p.stderr


# -----------------------------------------------------------------------------
# A folder of pictures, and a JSONL of texts the user has

def test_folder_build_shows_the_model_each_picture(tmp_path, api):
    photos = tmp_path / 'photos'
    (photos / 'sub').mkdir(parents=True)
    for i in range(5):
        Image.new('RGB', (300 + i, 200), (40 * i, 90, 160)).save(photos / ('sub' if i == 4 else '') / f'p{i}.png')
    (photos / 'broken.jpg').write_bytes(b'not a jpeg at all')
    (photos / 'notes.txt').write_text('not a picture')
    out = str(tmp_path / 'mine')
    build.main(['--dataset=folder', f'--images={photos}', '--n_test=1', f'--out={out}', f'--base_url={api.url}/v1',
               '--yes=true', '--workers=2'])
    requests = chat_requests(api)
    assert len(requests) == 5  # none for the broken file
    for e in requests:
        text, image = e['body']['messages'][1]['content']
        assert text['text'] == build.IMAGE_PROMPT and image['image_url']['detail'] == 'low'
        jpeg = base64.b64decode(image['image_url']['url'].split(',', 1)[1])
        assert max(Image.open(io.BytesIO(jpeg)).size) <= 512
    log = data.read_log(os.path.join(out, 'build.jsonl'))
    assert [r['id'] for r in log if 'skipped' in r] == ['broken.jpg']
    records = sum(splits(out).values(), [])
    assert len(records) == 5 and {os.path.basename(r['image']) for r in records} == {f'p{i}.png' for i in range(5)}
    for r in records:
        assert os.path.samefile(os.path.join(out, r['image']), photos / r['id'])


def test_jsonl_build_needs_no_model(tmp_path, capsys):
    (tmp_path / 'pics').mkdir()
    rows = []
    for i in range(7):
        Image.new('RGB', (20, 20), (30 * i, 0, 0)).save(tmp_path / 'pics' / f'{i}.png')
        rows.append({'image': f'pics/{i}.png', 'short': f'  A red   square number {i}.', 'long': LONG})
    rows += [{'image': 'pics/missing.png', 'short': SHORT}, {'image': 'pics/0.png'}]
    (tmp_path / 'mine.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    out = str(tmp_path / 'set')
    build.main(['--dataset=jsonl', f'--path={tmp_path / "mine.jsonl"}', '--n_test=2', f'--out={out}'])
    assert 'skipped 2 records' in capsys.readouterr().out
    got = splits(out)
    assert [len(got[s]) for s in ('train', 'val', 'test')] == [4, 1, 2]
    assert all(r['prompts']['short'] == r['short'] for r in got['test'])  # 6-7 words of a 6-word text: all of it
    for r in got['train']:
        assert r['short'].startswith('A red square number') and os.path.exists(os.path.join(out, r['image']))


# -----------------------------------------------------------------------------
# The rules a description must keep, and the reply formats that are understood

@pytest.mark.parametrize('short,problem', [
    (SHORT, None),
    ('Wow, ' + SHORT[0].lower() + SHORT[1:], 'opens with filler ("Wow")'),
    ('Looking up, ' + SHORT[0].lower() + SHORT[1:], None),  # "Looking" is not "Look"
    (SHORT.replace('red ball', '"red" ball'), 'quotation or exclamation marks'),
    (SHORT.replace('ball.', 'ball!'), 'quotation or exclamation marks'),
    ('- ' + SHORT, 'is a list'),
    (SHORT.replace('.', ',', 2).replace(', He', ', he').replace(', The', ', the'), 'has 1 sentences'),
    ('A dog runs. ' * 7, 'has 7 sentences; it must have 2 to 3'),  # the right number of words, too many sentences
])
def test_check_descriptions(short, problem):
    texts, why = build.check_descriptions(descriptions(short=short))
    if problem is None:
        assert why is None and texts['long'] == LONG
    else:
        assert texts is None and problem in why


def test_parse_json_reply():
    assert chat.parse_json_reply('{"a": 1}') == {'a': 1}
    assert chat.parse_json_reply('```json\n{"a": {"b": 2}}\n```') == {'a': {'b': 2}}
    assert chat.parse_json_reply('Sure {not json} here: {"a": 1} and {"b": 2}') == {'a': 1}
    with pytest.raises(ValueError):
        chat.parse_json_reply('no braces here')


def test_retry_after_is_read_as_seconds_or_a_date():
    import email.utils

    def response(value):
        return SimpleNamespace(headers={'Retry-After': value} if value is not None else {})
    assert chat._retry_after(response('3')) == 3.0
    assert chat._retry_after(response('100000')) == 300.0  # a day's wait is capped: we give up sooner instead
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= chat._retry_after(response(in_ten)) <= 10
    assert chat._retry_after(response(None)) is None and chat._retry_after(response('soon')) is None


# -----------------------------------------------------------------------------
# What is built trains and samples unchanged

def test_a_built_dataset_trains_and_completes(tmp_path, coco, api, run_script, train_flags):
    out = str(tmp_path / 'coco')
    build_coco(out, coco, api, n=10, n_test=2)
    ckpt = str(tmp_path / 'out')
    p = run_script('train.py', f'--data_dir={out}', f'--out_dir={ckpt}', *train_flags)
    assert p.returncode == 0, p.stderr
    samples = str(tmp_path / 'samples.jsonl')
    p = run_script('sample.py', f'--out_dir={ckpt}', f'--jsonl={out}/test.jsonl', '--task=complete', '--style=long',
                   f'--out={samples}', '--max_new_tokens=20')
    assert p.returncode == 0, p.stderr
    test = data.read_jsonl(os.path.join(out, 'test.jsonl'))
    got = data.read_jsonl(samples)
    assert [r['id'] for r in got] == [r['id'] for r in test]
    for r, t in zip(got, test):
        assert r['prompt'] == t['prompts']['long'] and r['text'].startswith(r['prompt']) and r['reference'] == t['long']
