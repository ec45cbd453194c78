"""--batch (batch.py): build.py and grade.py through OpenAI's Files and Batches endpoints, played by a real server on
127.0.0.1 (servers.batch_server) with the objects of OpenAI's API reference; the records equal a live run's on the
same replies, and kill -9 at any step, then the same command, pays for nothing twice."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib

import pytest
from PIL import Image

import batch
import build
import chat
import data
import grade
from cli import UserError
from conftest import KEY, ROOT
from servers import TOO_LONG, batch_server, descriptions


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    for i in range(60):
        Image.new('RGB', (8, 8), (4 * i, 255 - 4 * i, (97 * i) % 256)).save(folder / f'p{i:02d}.png')
    return folder


def describe(body):
    """The fake writer: a reply that breaks the rules (44 words) the first time a sixth of the pictures are asked,
    good ones otherwise, the same for a live request and a batch's line."""
    bad = len(body['messages']) == 2 and zlib.crc32(picture(body).encode()) % 6 == 0
    return descriptions(short=TOO_LONG) if bad else descriptions()


def picture(body):
    return body['messages'][1]['content'][1]['image_url']['url']


def built(out):
    return sorted(data.read_jsonl(os.path.join(out, 'build.jsonl')), key=lambda r: r['id'])


def batch_lines(server):
    """Every line of every batch created: (batch id, the line)."""
    return [(b['id'], json.loads(line)) for b in server.batches.values()
            for line in server.files[b['input_file_id']].splitlines()]


def check_shapes(server, live_bodies):
    """The request shapes of OpenAI's API reference. Upload: multipart/form-data with exactly the fields file and
    purpose, purpose "batch", a .jsonl file within the per-file limits. Each line: exactly custom_id, method "POST",
    url "/v1/chat/completions" and a body equal to the live request's for the same custom_id. Batch creation: exactly
    input_file_id (an uploaded file), endpoint "/v1/chat/completions", completion_window "24h"."""
    for upload in server.uploads:
        assert upload['content_type'] == 'multipart/form-data' and upload['form'] == ['file', 'purpose']
        assert upload['file']['purpose'] == 'batch' and upload['file']['filename'].endswith('.jsonl')
        assert upload['file']['bytes'] <= batch.MAX_BYTES
    uploaded = {u['file']['id'] for u in server.uploads}
    for b in server.batches.values():
        assert b['asked'] == {'input_file_id': b['input_file_id'], 'endpoint': '/v1/chat/completions',
                              'completion_window': '24h'} and b['input_file_id'] in uploaded
        assert len(server.files[b['input_file_id']].splitlines()) <= batch.MAX_REQUESTS
    for _, line in batch_lines(server):
        assert set(line) == {'custom_id', 'method', 'url', 'body'} and line['method'] == 'POST'
        assert line['url'] == '/v1/chat/completions' and line['body'] == live_bodies[line['custom_id']]


def test_a_batch_build_writes_what_a_live_build_writes(tmp_path, photos, monkeypatch, capsys):
    """60 pictures in three batches (at most 25 a file here), two lines failing in the batch, a reply that breaks the
    rules sent back live: every record once, equal to a live run's on the same replies. Then a folder that a live run
    left after 20: the batches hold only the other 40."""
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    monkeypatch.setattr(batch, 'MAX_REQUESTS', 25)
    flags = ['--dataset=folder', f'--images={photos}', '--n_test=5', '--yes', '--workers=2']
    live = batch_server(describe)
    try:
        build.main([*flags, f'--out={tmp_path / "live"}', f'--base_url={live.url}/v1'])
    finally:
        live.close()
    records = built(tmp_path / 'live')
    assert 0 < sum(r['usage']['prompt_tokens'] == 200 for r in records) < 60  # some replies were sent back
    ids = {chat.image_content(os.path.join(tmp_path / 'live', r['image']))['image_url']['url']: r['id'] for r in records}
    first_asks = {ids[picture(e['body'])]: e['body'] for e in live.log if len(e['body']['messages']) == 2}
    log = data.read_jsonl(os.path.join(tmp_path / 'live', 'build.jsonl'))
    for name, before, batches in (('batched', [], 3), ('after-live', log[:20], 2)):
        out = tmp_path / name
        out.mkdir()
        if before:
            data.write_jsonl(str(out / 'build.jsonl'), before)  # a live run that stopped after 20
        server = batch_server(describe, fail=[log[30]['id'], log[41]['id']])
        try:
            capsys.readouterr()
            build.main([*flags, f'--out={out}', f'--base_url={server.url}/v1', '--batch', '--batch_poll=0.01'])
            said = capsys.readouterr().out
            assert 'requests to gpt-4o at' in said and 'as Batch API jobs' in said and 'within 24 hours' in said
            lines = batch_lines(server)
            assert sorted(line['custom_id'] for _, line in lines) == sorted(r['id'] for r in log[len(before):])
            assert len(server.batches) == batches and len(server.seen) == 60 - len(before) - 2
            check_shapes(server, first_asks)
            live_asks = [e for e in server.log if e['body'].get('messages')]
            assert len([e for e in live_asks if len(e['body']['messages']) == 2]) == 2  # the two failed lines, anew
        finally:
            server.close()
        assert built(out) == records
        for split in ('train', 'val', 'test'):
            assert (out / f'{split}.jsonl').read_text() == (tmp_path / 'live' / f'{split}.jsonl').read_text()


def test_batch_files_keep_the_per_file_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, 'MAX_REQUESTS', 4)
    monkeypatch.setattr(batch, 'MAX_BYTES', 25)
    lines = [(f'r{i}', 'x' * (9 if i < 6 else 3) + '\n') for i in range(12)]  # 10 bytes each, then 4
    parts = list(batch.write_parts(str(tmp_path), lines, 3))
    assert parts == [(3, ['r0', 'r1']), (4, ['r2', 'r3']), (5, ['r4', 'r5', 'r6']), (6, ['r7', 'r8', 'r9', 'r10']),
                     (7, ['r11'])]  # 25 bytes at most, then 4 requests at most
    assert (tmp_path / 'input-6.jsonl').read_text() == 'xxx\n' * 4


def test_the_estimate_says_batch_prices_and_the_window():
    c = grade.SimpleNamespace(model='gpt-4o', base_url='https://api.openai.com/v1', price_in=-1.0, price_out=-1.0)
    live = chat.estimate(['x' * 400] * 1000, True, 100, grade.SimpleNamespace(**vars(c), batch=False))
    batched = chat.estimate(['x' * 400] * 1000, True, 100, grade.SimpleNamespace(**vars(c), batch=True))
    assert 'at $2.5 in and $10 out per million' in live and 'Batch' not in live and '24 hours' not in live
    dollars = [float(s.split('about $')[1].split()[0]) for s in (live, batched)]
    assert dollars[1] == pytest.approx(dollars[0] / 2, abs=0.01) and 'at $1.25 in and $5 out' in batched
    assert 'as Batch API jobs' in batched and 'the replies come within 24 hours' in batched
    given = chat.estimate(['x'] * 10, False, 100, grade.SimpleNamespace(**{**vars(c), 'price_in': 1.0, 'price_out': 2.0}, batch=True))
    assert 'at $1 in and $2 out' in given  # --price_in/out are taken as they are


def marks(body):
    """The fake judge: scores read off the text's number; the first ask of every seventh is missing "plot"."""
    text = body['messages'][1]['content'][0]['text']
    i = int(text.split('number ')[1].split('.')[0])
    scores = {'assessment': 'Fine.', 'grammar': 1 + i % 10, 'consistency': 1 + i % 7, 'creativity': 1 + i % 3,
              'meaningfulness': 5, 'plot': 1 + i % 4}
    if len(body['messages']) == 2 and i % 7 == 0:
        del scores['plot']
    return json.dumps(scores)


def test_a_batch_grading_writes_what_a_live_grading_writes_and_an_expired_batch_keeps_its_replies(tmp_path, monkeypatch,
                                                                                                    capsys):
    """50 texts: the batch expires after 30, one line fails; the rest go out live. The cache equals a live run's."""
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    samples = tmp_path / 's.jsonl'
    data.write_jsonl(str(samples), [{'id': f's{i}', 'image': 'x.png', 'style': 'short', 'prompt': 'The red ball',
                                     'text': f'The red ball rolls to dog number {i}.'} for i in range(50)])
    caches = {}
    for how in ('live', 'batch'):
        server = batch_server(marks, expire=30, step=7)
        if how == 'batch':
            server.fail = {grade.grade_key({'prompt': 'The red ball', 'text': 'The red ball rolls to dog number 3.',
                                            'image': 'x.png'}, grade.SimpleNamespace(model='gpt-4o', with_image=False))}
        try:
            grade.main([str(samples), '--judge=gpt', f'--base_url={server.url}/v1', f'--cache={tmp_path / how}.jsonl',
                        '--yes', '--workers=2', *(['--batch', '--batch_poll=0.01'] if how == 'batch' else [])])
        finally:
            server.close()
        caches[how] = sorted(data.read_jsonl(str(tmp_path / f'{how}.jsonl')), key=lambda r: r['key'])
        if how == 'batch':
            said = capsys.readouterr().out
            assert said.count('batch batch_0 expired; the 29 replies it finished are kept, the rest go out live') == 1
            assert len(server.batches) == 1 and len(server.seen) == 29
            live_chat = [e for e in server.log if e['body'].get('messages')]
            assert len([e for e in live_chat if len(e['body']['messages']) == 2]) == 21  # 20 expired and 1 failed, sent anew
    assert len(caches['batch']) == 50 and caches['batch'] == caches['live']
    assert all('scores' in r for r in caches['batch'])


def test_a_run_without_batch_collects_what_a_batch_holds(tmp_path, photos, monkeypatch, capsys):
    """A --batch run that stops while its batch runs, then the command without --batch: the batch's replies are
    collected, not asked for again live, and no second batch is made."""
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    server = batch_server(describe)

    def hang_up(event):  # a look at the batch is never answered: the run stops, its batch made
        if event == 'poll':
            raise ConnectionError
    server.hook = hang_up
    flags = ['--dataset=folder', f'--images={photos}', '--n_test=5', '--yes', f'--out={tmp_path / "out"}',
             f'--base_url={server.url}/v1', '--max_retries=0', '--timeout=2', '--batch_poll=0.01']
    try:
        with pytest.raises(UserError, match='every batch step so far is in .*batch: run the same command again'):
            build.main([*flags, '--batch'])
        server.hook = lambda event: None
        capsys.readouterr()
        build.main(flags)
        assert f'60 of these requests are in a batch ({tmp_path / "out" / "batch"}): its replies are collected' in \
            capsys.readouterr().out
        assert len(server.batches) == 1 and len(server.seen) == 60
        assert not [e for e in server.log if len(e['body'].get('messages', [])) == 2]  # nothing asked anew live
        assert len(built(tmp_path / 'out')) == 60
    finally:
        server.close()


def test_kill_9_at_any_step_then_the_same_command_pays_for_nothing_twice(tmp_path, photos):
    """kill -9 at 8 moments, each followed by the same command: while uploading (twice), just after a batch is made
    and before its id comes back (twice: the rerun must find it, not make another), while polling, while downloading
    (twice), and while writing records; which upload, which look and after how many records are drawn at random.
    Three batches (25 requests a file at most)."""
    server = batch_server(describe, step=10)
    server.delay = 0.05  # live requests (the replies sent back) take a while: the writing takes time to kill in
    out = tmp_path / 'out'
    env = dict(os.environ, OPENAI_API_KEY=KEY)
    command = [sys.executable, '-c', 'import sys, batch; batch.MAX_REQUESTS = 25; sys.argv[0] = "build.py"; '
               'import build, cli; cli.run_cli(build.main)', '--dataset=folder', f'--images={photos}', '--n_test=5',
               '--yes', f'--out={out}', f'--base_url={server.url}/v1', '--batch', '--batch_poll=0.01', '--workers=2']
    rng = random.Random(int(os.environ.get('NANOVLMS_BATCH_SEED', '22')))  # which upload, look and record is cut
    plan = [('upload', rng.randint(1, 3)), ('upload', 1), ('create', 1), ('create', 1), ('poll', rng.randint(1, 10)),
            ('download', 1), ('download', 2), ('write', rng.randint(1, 8))]
    kills, written = 0, None
    try:
        for event, nth in plan:
            seen = {'n': 0}
            p = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def hook(what, p=p, event=event, nth=nth, seen=seen):
                if what == event:
                    seen['n'] += 1
                    if seen['n'] == nth:
                        p.send_signal(signal.SIGKILL)
                        p.wait()
            server.hook = hook
            if event == 'write':
                have = len(built(out)) if (out / 'build.jsonl').exists() else 0
                while p.poll() is None:
                    if (out / 'build.jsonl').exists() and len(open(out / 'build.jsonl').readlines()) >= have + nth:
                        p.send_signal(signal.SIGKILL)
                        written = len(open(out / 'build.jsonl').readlines())
                        break
                    time.sleep(0.002)
            p.communicate(timeout=120)
            kills += p.returncode == -signal.SIGKILL
        server.hook = lambda what: None
        p = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        server.close()
    assert kills == 8 and 0 < written < 60  # the last kill landed while records were being written
    ids = [r['id'] for r in data.read_jsonl(str(out / 'build.jsonl'))]
    assert len(ids) == 60 and len(set(ids)) == 60  # complete, none twice
    in_batches = [line['custom_id'] for _, line in batch_lines(server)]
    assert sorted(in_batches) == sorted(ids)  # exactly one batch per request
    assert sum(len(data.read_jsonl(str(out / f'{s}.jsonl'))) for s in ('train', 'val', 'test')) == 60
