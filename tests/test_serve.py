"""serve.py, the live page's server, over real HTTP on 127.0.0.1: words stream as they are chosen, facts are marked,
every bad request gets its 4xx and one line (and the server answers the next), many clients are not mixed up, and a
client that leaves stops its work."""
import base64
import http.client
import io
import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

import data
import picturebook
import sample
import serve
from checkpoint import load_checkpoint, model_from_checkpoint
from test_pictures_zoo import png_of_zeros

SCENE = {'sky': 'night', 'ground': 'snow', 'objects': [{'kind': 'tree', 'color': 'blue', 'size': 'big', 'where': 'left'}]}
PROMPT = 'A blue tree and a red ball'  # one true fact, one false, whatever the model writes after them


@pytest.fixture(scope='module')
def live(trained, tmp_path_factory):
    """A server on a free port of 127.0.0.1 whose folder holds out-a (the session's tiny checkpoint) and what it
    must not read: a ckpt.pt outside an out* folder, an out* link to a folder elsewhere, an out* folder without one."""
    root, elsewhere = tmp_path_factory.mktemp('root'), tmp_path_factory.mktemp('elsewhere')
    for folder in (root / 'out-a', root / 'other', root / 'out-empty', elsewhere / 'out-x'):
        folder.mkdir()
    for folder in (root / 'out-a', root / 'other', elsewhere / 'out-x'):
        shutil.copy(os.path.join(trained.out_dir, 'ckpt.pt'), folder / 'ckpt.pt')
    os.symlink(elsewhere / 'out-x', root / 'out-link')
    server = serve.LiveServer('127.0.0.1', 0, root=str(root), quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    model, tokenizer = model_from_checkpoint(load_checkpoint(str(root / 'out-a' / 'ckpt.pt')))
    yield server, model, tokenizer, elsewhere
    server.shutdown()
    server.server_close()


def request(server, method, path, body=None, headers=None, raw=None):
    """(status, decoded JSON or text) of one request; body is sent as JSON, raw as given."""
    c = http.client.HTTPConnection('127.0.0.1', server.server_address[1], timeout=60)
    payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
    c.request(method, path, payload, headers or {})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    return r.status, (json.loads(text) if r.getheader('Content-Type') == 'application/json' else text)


def events(text):
    """The Server-Sent Events of a stream: [(name, data)]."""
    out = []
    for block in text.strip().split('\n\n'):
        name, payload = block.split('\n')
        out.append((name.removeprefix('event: '), json.loads(payload.removeprefix('data: '))))
    return out


def test_page_and_setup_offline_and_only_out_folders(live):
    server = live[0]
    status, page = request(server, 'GET', '/')
    assert status == 200 and '<script>' in page
    assert 'http://' not in page and 'https://' not in page and 'src="//' not in page, 'the page loads from the internet'
    status, setup = request(server, 'GET', '/api/setup')
    assert status == 200 and setup['checkpoints'] == ['out-a'], setup['checkpoints']  # not other/, the link, the empty
    assert setup['hint'] is None and setup['tests'][0] == serve.TEST_SCENES[0] and 'tree' in setup['kinds']


def test_describe_streams_words_marks_facts_and_sends_attention(live):
    server, model, tokenizer, _ = live
    status, text = request(server, 'POST', '/api/describe', {'checkpoint': 'out-a', 'scene': SCENE, 'prompt': PROMPT,
                                                             'temperature': 0, 'max_new_tokens': 20})
    assert status == 200
    stream = events(text)
    names = [n for n, _ in stream]
    assert names[0] == 'picture' and names[-1] == 'done' and set(names[1:-1]) == {'words'}
    steps = [d['words'] for n, d in stream if n == 'words']
    assert len(steps) >= 2 and all(len(a) <= len(b) for a, b in zip(steps, steps[1:])), 'words do not come one by one'
    done = stream[-1][1]
    image = np.asarray(picturebook.draw_scene(SCENE, model.config.img_size))
    alone = sample.describe(model, tokenizer, image[None], prompt=PROMPT, temperature=0, max_new_tokens=20)[0]
    assert done['text'] == alone == ''.join(w for w, _ in done['words'])  # the very text sample.py would write
    marks = {w.strip(): m for w, m in done['words'][:7]}
    assert marks['blue'] == marks['tree'] == 1 and marks['red'] == marks['ball'] == 2 and marks['and'] == 0
    assert done['grounding'].endswith('1/1 objects named') and ' facts true, ' in done['grounding']
    a = done['attention']
    assert len(a['labels']) == len(done['words']) == len(a['maps']) == len(a['shares'])
    grid = model.config.img_size // model.config.patch_size // model.config.merge  # a cell a visual token
    assert np.array(a['maps']).shape == (len(a['labels']), grid, grid)
    assert np.allclose(np.array(a['maps']).sum((1, 2)), 1, atol=1e-3) and all(0 < s <= 1 for s in a['shares'])
    status, picture = request(server, 'POST', '/api/picture', {'scene': SCENE})
    assert status == 200 and picture['png'].startswith('data:image/png;base64,')


def upload_of(png_bytes):
    return 'data:image/png;base64,' + base64.b64encode(png_bytes).decode()


def png(size=(40, 30)):
    buf = io.BytesIO()
    Image.new('RGB', size, (200, 30, 30)).save(buf, format='PNG')
    return buf.getvalue()


def test_an_upload_is_described(live):
    status, text = request(live[0], 'POST', '/api/describe', {'checkpoint': 'out-a', 'upload': upload_of(png()),
                                                              'max_new_tokens': 5})
    done = events(text)[-1][1]
    assert status == 200 and done['grounding'] is None and done['text']


def bad_requests(tmp_path, elsewhere):
    """(what, method, path, body or raw bytes, headers, status, a word of the message)"""
    png_of_zeros(tmp_path / 'bomb.png', 10000, 10000)  # 100 million pixels, 12 kB
    good = {'checkpoint': 'out-a', 'scene': SCENE}
    blue_dragon = {**good, 'scene': {**SCENE, 'objects': [{**SCENE['objects'][0], 'kind': 'dragon'}]}}
    return [
        ('malformed JSON', 'POST', '/api/describe', b'{"checkpoint": "out-a",', {}, 400, 'not JSON'),
        ('JSON not an object', 'POST', '/api/describe', b'[1, 2]', {}, 400, 'not a JSON object'),
        ('a kind outside the vocabulary', 'POST', '/api/describe', blue_dragon, {}, 400, 'picture-book scene'),
        ('five objects', 'POST', '/api/picture', {'scene': {**SCENE, 'objects': SCENE['objects'] * 5}}, {}, 400,
         '1 to 4 objects'),
        ('a sky of the wrong type', 'POST', '/api/picture', {'scene': {**SCENE, 'sky': ['night']}}, {}, 400, 'scene'),
        ('no picture', 'POST', '/api/describe', {'checkpoint': 'out-a'}, {}, 400, 'picture-book scene'),
        ('an upload not base64', 'POST', '/api/describe', {**good, 'upload': 'data:image/png;base64,@@@'}, {}, 400,
         'base64'),
        ('a truncated upload', 'POST', '/api/describe', {**good, 'upload': upload_of(png((300, 300))[:400])}, {}, 422,
         'the upload'),
        ('an upload that is no picture', 'POST', '/api/picture', {'upload': upload_of(b'hello' * 100)}, {}, 422,
         'the upload'),
        ('a decompression bomb', 'POST', '/api/describe', {**good, 'upload': upload_of((tmp_path / 'bomb.png').read_bytes())},
         {}, 422, 'decompression bomb'),
        ('a prompt longer than the context', 'POST', '/api/describe', {**good, 'prompt': 'a red ball ' * 45}, {}, 400,
         'reads at most'),
        ('a prompt far too long', 'POST', '/api/describe', {**good, 'prompt': 'x' * 100000}, {}, 400, 'prompt'),
        ('a style of the wrong kind', 'POST', '/api/describe', {**good, 'style': 'poem'}, {}, 400, 'short or long'),
        ('a temperature as text', 'POST', '/api/describe', {**good, 'temperature': 'hot'}, {}, 400, 'temperature'),
        ('a top-k below zero', 'POST', '/api/describe', {**good, 'top_k': -1}, {}, 400, 'top_k'),
        ('a checkpoint path up and out', 'POST', '/api/describe', {**good, 'checkpoint': '../out-a'}, {}, 403, 'not a path'),
        ('a checkpoint as an absolute path', 'POST', '/api/describe', {**good, 'checkpoint': str(elsewhere / 'out-x')},
         {}, 403, 'not a path'),
        ('a checkpoint outside the out folders', 'POST', '/api/describe', {**good, 'checkpoint': 'other'}, {}, 403,
         'out* folder'),
        ('an out link to elsewhere', 'POST', '/api/describe', {**good, 'checkpoint': 'out-link'}, {}, 404, 'out-a'),
        ('an out folder without a checkpoint', 'POST', '/api/describe', {**good, 'checkpoint': 'out-empty'}, {}, 404,
         'no checkpoint'),
        ('a checkpoint that is not a name', 'POST', '/api/describe', {**good, 'checkpoint': {'a': 1}}, {}, 403, 'name'),
        ('a body over the cap', 'POST', '/api/describe', b'', {'Content-Length': str(serve.MAX_BODY + 1)}, 413,
         'at most'),
        ('a body without a length', 'POST', '/api/describe', b'', {'Transfer-Encoding': 'chunked'}, 411,
         'Content-Length'),
        ('a file of the repository', 'GET', '/serve.py', None, {}, 404, 'no such page'),
        ('a file up and out', 'GET', '/../../etc/passwd', None, {}, 404, 'no such page'),
        ('the wrong method', 'GET', '/api/describe', None, {}, 405, 'no such page'),
    ]


def test_every_bad_request_gets_its_4xx_and_the_server_goes_on(live, tmp_path):
    server, _, _, elsewhere = live
    for what, method, path, body, headers, status, words in bad_requests(tmp_path, elsewhere):
        raw = body if isinstance(body, bytes) else None
        got, reply = request(server, method, path, None if raw is not None else body, headers, raw=raw)
        assert (got, words in reply.get('error', '')) == (status, True), (what, got, reply)
        assert len(reply['error'].splitlines()) == 1 and 'Traceback' not in reply['error'], what
        assert request(server, 'GET', '/api/setup')[0] == 200, f'the server did not answer after {what}'


def test_a_body_that_stops_short_is_refused(live):
    """The client says 100 bytes and sends 9, then closes its side: 400, and the server goes on."""
    sock = socket.create_connection(live[0].server_address, timeout=30)
    sock.sendall(b'POST /api/describe HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"checkpo')
    sock.shutdown(socket.SHUT_WR)
    reply = sock.makefile('rb').read().decode()
    sock.close()
    assert reply.startswith('HTTP/1.0 400') and 'ended after 9 of its 100 bytes' in reply, reply
    assert request(live[0], 'GET', '/api/setup')[0] == 200


def test_a_client_that_leaves_stops_its_description(live):
    server, model, _, _ = live
    before = dict(server.stats)
    body = json.dumps({'checkpoint': 'out-a', 'scene': SCENE, 'prompt': PROMPT, 'temperature': 1.5, 'top_k': 0,
                       'max_new_tokens': model.config.block_size}).encode()
    sock = socket.create_connection(server.server_address, timeout=30)
    sock.sendall(b'POST /api/describe HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
    got = b''
    while b'event: words' not in got:
        got += sock.recv(4096)
    sock.close()  # mid-description
    deadline = time.time() + 20
    while server.stats['stopped'] == before['stopped'] and time.time() < deadline:
        time.sleep(0.02)
    assert server.stats['stopped'] == before['stopped'] + 1 and server.stats['described'] == before['described']
    status, text = request(server, 'POST', '/api/describe', {'checkpoint': 'out-a', 'scene': SCENE, 'max_new_tokens': 3})
    assert status == 200 and events(text)[-1][0] == 'done', 'the model was not freed'


def test_twenty_clients_at_once_each_get_their_own_description(live):
    server, model, tokenizer, _ = live
    scenes = [scene for _, _, scene, _, _ in picturebook.pages([('test', 20)], seed=7)]
    prompts = [f'There is a {o["color"]} {o["kind"]}' for o in (s['objects'][0] for s in scenes)]
    texts = [None] * 20

    def client(i):
        status, text = request(server, 'POST', '/api/describe', {'checkpoint': 'out-a', 'scene': scenes[i], 'temperature': 0,
                                                                 'prompt': prompts[i], 'max_new_tokens': 12})
        texts[i] = events(text)[-1][1]['text'] if status == 200 else text
    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, scene in enumerate(scenes):
        image = np.asarray(picturebook.draw_scene(scene, model.config.img_size))
        alone = sample.describe(model, tokenizer, image[None], prompt=prompts[i], temperature=0, max_new_tokens=12)[0]
        assert texts[i] == alone, (i, texts[i], alone)


def test_without_a_checkpoint_page_and_terminal_say_how_to_train_one(tmp_path, monkeypatch, capsys):
    server = serve.LiveServer('127.0.0.1', 0, root=str(tmp_path), quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert request(server, 'GET', '/api/setup')[1]['hint'] == serve.TRAIN_HINT
        status, reply = request(server, 'POST', '/api/describe', {'checkpoint': 'out-tiny', 'scene': SCENE})
        assert status == 404 and 'python train.py --size=tiny' in reply['error']
    finally:
        server.shutdown()
        server.server_close()

    def ctrl_c(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(serve, 'ROOT', str(tmp_path))
    monkeypatch.setattr(serve.LiveServer, 'serve_forever', ctrl_c)
    for host, warned in (('127.0.0.1', False), ('0.0.0.0', True)):
        with pytest.raises(KeyboardInterrupt):
            serve.main([f'--host={host}', '--port=0'])
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith('nanovlms live page: http://') and out[-1] == serve.TRAIN_HINT, out
        assert any('warning: ' in line and 'anyone' in line for line in out) == warned, out


def test_a_failure_mid_stream_ends_it_with_an_error_event(live, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('a bug')
    monkeypatch.setattr(serve.pictures, 'attention_maps', broken)
    status, text = request(live[0], 'POST', '/api/describe', {'checkpoint': 'out-a', 'scene': SCENE, 'max_new_tokens': 3})
    assert status == 200 and events(text)[-1] == ('error', {'error': 'the server failed: RuntimeError'})
    monkeypatch.undo()
    assert events(request(live[0], 'POST', '/api/describe', {'checkpoint': 'out-a', 'scene': SCENE,
                                                             'max_new_tokens': 3})[1])[-1][0] == 'done'
