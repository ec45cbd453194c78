"""
Files and servers that are not ours (issue 19): what comes from outside is checked before it is trusted, never
decides where we write, never costs the user a file, and ends in one line, not a traceback or a hang. Against real
servers on 127.0.0.1 (tests/servers.py): a COCO server whose annotations name files outside the dataset folder and
a picture that is also a Python program, and a Chat Completions server that sends a huge reply, trickles one in,
nests JSON 100,000 deep or sends a long error page.
"""
import json
import os
import threading
import time

import pytest

import build
import chat
import data
import grade
import cli
from cli import UserError
from conftest import KEY
from servers import XBM_PYTHON, coco_server

GRADE = json.dumps({'assessment': 'Fine.', 'grammar': 7, 'consistency': 7, 'creativity': 7, 'meaningfulness': 7,
                    'plot': 7})


def samples(path, n):
    data.write_jsonl(str(path), [{'id': f's{i}', 'image': 'x.png', 'style': 'short', 'prompt': 'The red',
                                  'text': f'The red ball number {i} rolls.'} for i in range(n)])
    return str(path)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# -----------------------------------------------------------------------------
# 1. A COCO server that names files outside the folder, and serves a picture that is also a program

def test_coco_file_names_never_decide_where_a_build_writes(tmp_path, api, capsys):
    outside = tmp_path / 'y.png'  # an absolute file name in the annotations
    coco = coco_server(hostile=['../../x.py', str(outside), 'xbm.jpg'])
    out = tmp_path / 'a' / 'b' / 'coco'
    try:
        build.main(['--dataset=coco', '--n=17', '--n_test=2', f'--out={out}', f'--coco_url={coco.url}',
                    f'--base_url={api.url}/v1', '--yes=true', '--workers=3'])
    finally:
        coco.close()
    said = capsys.readouterr().out
    assert files_under(tmp_path) == sorted('a/b/coco/' + f for f in files_under(out))  # nothing outside the folder
    assert not outside.exists() and not (tmp_path / 'a' / 'b' / 'x.py').exists() and not (tmp_path / 'x.py').exists()
    refused = [line for line in said.splitlines() if line.startswith('skipped COCO image')]
    assert len(refused) == 3, said  # one line each
    assert "'../../x.py' points outside" in refused[0] + refused[1] and f"'{outside}' points outside" in said
    assert any('xbm.jpg: it is in XBM format, not a photo' in line for line in refused)
    assert not any(b'this ran' in (out / f).read_bytes() for f in files_under(out) if f.startswith('images/'))
    built = sum((data.read_jsonl(str(out / f'{s}.jsonl')) for s in ('train', 'val', 'test')), [])
    assert len(built) == 16 and not any('xbm' in r['image'] for r in built)  # the rest built


def test_verify_image_takes_photos_only(tmp_path):
    path = tmp_path / 'a.jpg'
    path.write_bytes(XBM_PYTHON)
    assert 'in XBM format' in build.verify_image(str(path))
    from PIL import Image
    Image.new('RGB', (8, 8)).save(tmp_path / 'b.png')
    assert build.verify_image(str(tmp_path / 'b.png')) is None


def test_the_safe_join_keeps_inside(tmp_path):
    root = str(tmp_path / 'root')
    os.makedirs(root)
    os.symlink(str(tmp_path), os.path.join(root, 'up'))
    assert cli.inside(root, 'images/a.jpg', 'name') == os.path.join(root, 'images', 'a.jpg')
    for name in ['../x.py', '/etc/passwd', 'images/../../x.py', 'up/x.py', '']:
        if name:
            with pytest.raises(UserError, match='points outside'):
                cli.inside(root, name, 'name')


def test_coco_is_fetched_over_https_by_default_and_its_archive_is_pinned(tmp_path, api, monkeypatch):
    assert build.DEFAULTS['coco_url'].startswith('https://images.cocodataset.org')
    assert build.ANNOTATIONS_MD5['images.cocodataset.org'] == 'f4bbac642086de4f52a3fdda2de5fa2c'
    coco = coco_server()
    monkeypatch.setattr(build, 'ANNOTATIONS_MD5', {'127.0.0.1': '0' * 32})  # as if this server were COCO's
    try:
        with pytest.raises(UserError, match='it is not the archive COCO published'):
            build.main(['--dataset=coco', '--n=4', '--n_test=1', f'--out={tmp_path / "c"}', f'--coco_url={coco.url}',
                        f'--base_url={api.url}/v1', '--yes=true'])
    finally:
        coco.close()
    assert not (tmp_path / 'c' / 'annotations_trainval2017.zip').exists()


# -----------------------------------------------------------------------------
# 2. The API key: read once, stripped, never shown

@pytest.mark.parametrize('ending', ['\r\n', '\n', ' '])
def test_a_key_with_a_line_ending_is_used_stripped_and_never_shown(tmp_path, api, monkeypatch, run_main, ending):
    monkeypatch.setenv('OPENAI_API_KEY', KEY + ending)
    api.default = ('content', GRADE)
    cache = tmp_path / 'cache.jsonl'
    p = run_main('grade.py', samples(tmp_path / 's.jsonl', 2), '--judge=gpt', f'--base_url={api.url}/v1',
                 f'--cache={cache}', '--yes=true', f'--json={tmp_path / "r.json"}')
    assert p.returncode == 0, p.stderr
    assert [e['key'] for e in api.log] == [KEY, KEY]  # the stripped key went out
    for text in (p.stdout, p.stderr, cache.read_text(), (tmp_path / 'r.json').read_text()):
        assert KEY not in text and KEY[3:12] not in text


def test_a_key_with_a_space_inside_stops_in_one_line_without_showing_it(tmp_path, api, monkeypatch, run_main):
    bad = 'sk-test 0123456789'
    monkeypatch.setenv('OPENAI_API_KEY', bad)
    p = run_main('grade.py', samples(tmp_path / 's.jsonl', 2), '--judge=gpt', f'--base_url={api.url}/v1',
                 f'--cache={tmp_path / "cache.jsonl"}', '--yes=true')
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'OPENAI_API_KEY has a space' in p.stderr
    assert 'sk-test' not in p.stdout + p.stderr and '0123456789' not in p.stdout + p.stderr
    assert api.log == []  # nothing was sent


def test_a_key_for_a_remote_plain_http_server_is_warned_about(monkeypatch, capsys):
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    chat.ChatEndpoint('http://models.example.org/v1', 'm')
    assert 'warning: OPENAI_API_KEY goes to models.example.org over plain HTTP' in capsys.readouterr().err
    for url in ('https://models.example.org/v1', 'http://127.0.0.1:8000/v1', 'http://localhost:8000/v1'):
        chat.ChatEndpoint(url, 'm')
        assert capsys.readouterr().err == ''


# -----------------------------------------------------------------------------
# 3. User files are never cut or deleted

NOTES = b'my notes for tomorrow, no newline at the end'


def test_sample_out_that_is_a_notes_file_is_refused_untouched(tmp_path, trained, run_main):
    notes = tmp_path / 'notes.txt'
    notes.write_bytes(NOTES)
    p = run_main('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl',
                 f'--out={notes}', '--device=cpu', '--n=2')
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'is not a JSONL file of records' in p.stderr, p.stderr
    assert notes.read_bytes() == NOTES and sorted(os.listdir(tmp_path)) == ['notes.txt']


def test_grade_cache_that_is_a_notes_file_is_refused_untouched(tmp_path, api, run_main):
    notes = tmp_path / 'notes.txt'
    notes.write_bytes(NOTES)
    p = run_main('grade.py', samples(tmp_path / 's.jsonl', 2), '--judge=gpt', f'--base_url={api.url}/v1',
                 f'--cache={notes}', '--yes=true')
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'is not a JSONL file of records' in p.stderr, p.stderr
    assert notes.read_bytes() == NOTES and api.log == []


def test_a_log_whose_last_record_has_no_newline_keeps_it_and_a_refused_one_is_untouched(tmp_path):
    path = tmp_path / 'log.jsonl'
    raw = b'{"id": "a", "text": "one", "style": "short"}\n{"id": "b", "text": "two", "style": "short"}'
    path.write_bytes(raw)
    assert [r['id'] for r in data.read_log(str(path))] == ['a', 'b'] and path.read_bytes() == raw
    data.append_jsonl(str(path), [{'id': 'c', 'text': 'three', 'style': 'short'}], 'kept')
    assert [r['id'] for r in data.read_jsonl(str(path))] == ['a', 'b', 'c']
    first = tmp_path / 'first.jsonl'  # a run killed while it wrote its first record: that start is taken back
    first.write_bytes(b'{"id": "a", "te')
    assert data.read_log(str(first)) == [] and first.read_bytes() == b''
    other = tmp_path / 'other.jsonl'
    other.write_bytes(b'{"x": 1}\n{"x": 2, "cut')
    with pytest.raises(UserError, match='not grades'):
        grade.cached_grades(str(other))
    assert other.read_bytes() == b'{"x": 1}\n{"x": 2, "cut'


def test_a_read_only_json_target_is_kept(tmp_path, run_main, picturebook_dir):
    samples_path = tmp_path / 's.jsonl'
    test = data.read_jsonl(os.path.join(picturebook_dir, 'test.jsonl'))[:3]
    data.write_jsonl(str(samples_path), [{'id': r['id'], 'text': r['short'], 'scene': r['scene']} for r in test])
    target = tmp_path / 'results.json'
    target.write_text('{"earlier": "results"}')
    target.chmod(0o444)
    p = run_main('grade.py', str(samples_path), '--judge=grounding', f'--json={target}')
    assert p.returncode == 1 and p.stderr.count('\n') == 1 and 'is read-only' in p.stderr, p.stderr
    assert target.read_text() == '{"earlier": "results"}'
    assert sorted(os.listdir(tmp_path)) == ['results.json', 's.jsonl']  # no temporary file left


def jsonl_input(folder, rows):
    folder.mkdir(exist_ok=True)
    from PIL import Image
    for r in rows:
        Image.new('RGB', (16, 16), (9, 99, 199)).save(folder / r['image'])
    path = folder / 'train.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path


def test_a_jsonl_build_keeps_every_input_byte_and_every_record(tmp_path, capsys):
    short = 'A red ball rolls on the green grass. A small dog runs after it. The sun is warm and the sky is blue today.'
    rows = [{'id': '1', 'image': 'a.png', 'short': short, 'scene': {'sky': 'day'}}] + \
           [{'image': f'p{i}.png', 'short': short, 'scene': {'sky': 'night'}} for i in range(5)]  # the first gets '1'
    path = jsonl_input(tmp_path / 'mine', rows)
    before = path.read_bytes()
    with pytest.raises(UserError, match='would be overwritten'):
        build.main(['--dataset=jsonl', f'--path={path}', f'--out={tmp_path / "mine"}', '--n_test=1'])
    assert path.read_bytes() == before
    out = tmp_path / 'built'
    build.main(['--dataset=jsonl', f'--path={path}', f'--out={out}', '--n_test=1'])
    built = sum((data.read_jsonl(str(out / f'{s}.jsonl')) for s in ('train', 'val', 'test')), [])
    assert path.read_bytes() == before
    assert len(built) == 6 and len({r['id'] for r in built}) == 6  # every record, each in one split
    assert all('scene' in r for r in built) and [r['scene'] for r in built if r['id'] == '1'] == [{'sky': 'day'}]


# -----------------------------------------------------------------------------
# 4. Bad input that ends in one line, within the timeout

def test_a_jsonl_line_nested_100000_deep_is_one_line(tmp_path, run_main):
    path = tmp_path / 'deep.jsonl'
    path.write_text('{"id": "a", "text": "x"}\n' + '[' * 100_000 + ']' * 100_000 + '\n')
    for script, args in (('grade.py', [str(path)]), ('build.py', ['--dataset=jsonl', f'--path={path}',
                                                                  f'--out={tmp_path / "o"}'])):
        p = run_main(script, *args)
        assert p.returncode == 1 and p.stderr.count('\n') == 1 and f'{path}:2 is not valid JSON' in p.stderr, p.stderr
    with pytest.raises(ValueError, match='nested'):
        chat.parse_json_reply('{"a": ' * 100_000)


def timed(fn, limit):
    """fn() in a thread: (what it raised or returned, seconds it took); a failure if it is not over after limit s."""
    outcome = {}

    def go():
        try:
            outcome['value'] = fn()
        except BaseException as e:
            outcome['value'] = e
    start = time.monotonic()
    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f'still running after {limit}s'
    return outcome['value'], time.monotonic() - start


@pytest.mark.parametrize('step, said', [
    (('big', 200_000_000), 'the reply is over the 16,777,216 bytes allowed'),  # the real cap against 200 MB
    (('trickle', 0.25), 'no whole reply within 1s'),
    (('deep', 100_000), 'not a Chat Completions response'),
    (('page', 140_000), 'HTTP 500: an HTML error page'),
])
def test_a_hostile_reply_ends_in_one_line_within_the_timeout_keeping_what_was_done(tmp_path, api, step, said):
    api.script = [('content', GRADE), ('content', GRADE), step]
    cache = tmp_path / 'cache.jsonl'
    argv = [samples(tmp_path / 's.jsonl', 3), '--judge=gpt', f'--base_url={api.url}/v1', f'--cache={cache}',
            '--yes=true', '--workers=1', '--max_retries=0', '--timeout=1']
    error, seconds = timed(lambda: grade.main(argv), 30)
    assert isinstance(error, UserError) and '\n' not in str(error) and said in str(error), error
    assert seconds < 1 + 1 + 1, seconds  # two good replies, then the hostile one: its timeout plus at most a second
    assert len(data.read_log(str(cache))) == 2  # nothing finished is lost
    print(f'{step[0]}: {seconds:.2f}s')


def test_an_endless_trickle_is_cut_at_the_deadline(api):
    api.script = [('trickle', 0.2)]
    endpoint = chat.ChatEndpoint(f'{api.url}/v1', 'm', timeout=1.0, max_retries=0)
    error, seconds = timed(lambda: endpoint.complete([{'role': 'user', 'content': 'hi'}]), 10)
    assert isinstance(error, UserError) and 'no whole reply within 1s' in str(error)
    assert 1.0 <= seconds < 2.0, seconds


def test_a_long_error_page_is_summarised_at_once():
    start = time.monotonic()
    assert chat.page_summary('<html><title>' * 11_000) == 'an HTML error page'
    assert chat.page_summary('<html><head><title>502 Bad Gateway</title>' + 'x' * 140_000) == '502 Bad Gateway'
    assert time.monotonic() - start < 0.1


def test_the_annotations_are_read_with_a_size_bound(tmp_path, api, monkeypatch):
    coco = coco_server()
    (tmp_path / 'c').mkdir()  # downloaded before; its captions are 8 kB
    zip_bytes = coco.files['/annotations/annotations_trainval2017.zip']
    (tmp_path / 'c' / 'annotations_trainval2017.zip').write_bytes(zip_bytes)
    monkeypatch.setattr(build, 'ANNOTATIONS_BYTES', 1000)
    argv = ['--dataset=coco', '--n=4', '--n_test=1', f'--coco_url={coco.url}', f'--base_url={api.url}/v1', '--yes=true']
    try:
        with pytest.raises(UserError, match=r'does not hold the COCO captions \(the captions are over 1,000 bytes\)'):
            build.main([*argv, f'--out={tmp_path / "c"}'])
        with pytest.raises(UserError, match='the reply is 301,325 bytes, over the 1,000 allowed'):  # a download too
            build.main([*argv, f'--out={tmp_path / "d"}'])
    finally:
        coco.close()


# -----------------------------------------------------------------------------
# 5. Two runs into one place

def test_two_builds_into_one_folder_the_second_is_refused_and_nothing_is_paid_twice(tmp_path, api):
    from PIL import Image
    photos = tmp_path / 'photos'
    photos.mkdir()
    for i in range(6):
        Image.new('RGB', (20, 20), (30 * i, 90, 160)).save(photos / f'p{i}.png')
    api.delay = 0.2
    argv = ['--dataset=folder', f'--images={photos}', '--n_test=1', f'--out={tmp_path / "mine"}',
            f'--base_url={api.url}/v1', '--yes=true', '--workers=1']
    first = threading.Thread(target=build.main, args=(argv,))
    first.start()
    while not api.log:  # the first build is paying
        time.sleep(0.01)
    with pytest.raises(UserError, match=r'mine is in use by another build \(process \d+\); wait for it to finish'):
        build.main(argv)
    first.join()
    assert len(api.log) == 6  # each picture paid for once
    build.main(argv)  # once the first is done, the folder is free again
    assert len(api.log) == 6 and not (tmp_path / 'mine' / 'build.lock').exists()


def test_two_gradings_sharing_a_cache_the_second_is_refused(tmp_path, api):
    cache = str(tmp_path / 'cache.jsonl')
    lock = cli.hold(cache + '.lock', cache, 'another grading', 'give it another --cache')
    try:
        with pytest.raises(UserError, match='cache.jsonl is in use by another grading'):
            grade.main([samples(tmp_path / 's.jsonl', 2), '--judge=gpt', f'--base_url={api.url}/v1',
                        f'--cache={cache}', '--yes=true'])
    finally:
        lock.close()
    assert api.log == []


def test_temporary_names_are_each_writers_own(tmp_path):
    path = str(tmp_path / 'train.jsonl')
    names = {cli.temporary(path) for _ in range(3)}
    assert len(names) == 3 and all(n.startswith(path + f'.{os.getpid()}-') and n.endswith('.tmp') for n in names)
    data.write_jsonl(path, [{'id': 1}])
    assert os.listdir(tmp_path) == ['train.jsonl']
