"""
The live page: build a picture, watch a trained model describe it word by word, every fact it states marked true
or false, click a word to see where it looked, and two models side by side. A local server on Python's standard
library and one page (serve.html: no script, font or style from the internet).

    python serve.py                            # http://127.0.0.1:8000/ with the checkpoints of this folder's out*/
    python serve.py --port=8080 --host=0.0.0.0    # a classroom network: anyone on it can use the page
    python serve.py --measure=20               # how fast: one client, 20 at once, and sample.py's batch

The page asks, the server answers, in JSON over plain HTTP:
    GET  /                 the page
    GET  /api/setup        the picture-book vocabulary, test scenes to start from, the checkpoint folders
    POST /api/picture      {"scene": {...}} or {"upload": "data:image/png;base64,..."}: the picture as a PNG
    POST /api/describe     {"checkpoint": "out-tiny", "scene" or "upload", "style", "temperature", "top_k",
                           "prompt"}: Server-Sent Events, 'picture' (what the model sees), then 'words' as each
                           token is chosen (with its facts marked), then 'done' with the grounding line and the
                           attention map of every word (the numbers of sample.py --attention)

What strangers can reach is guarded: a checkpoint is named, never given as a path, and only this folder's out*/
folders holding a ckpt.pt are ever read (no other file is read or served); bodies are capped at MAX_BODY and read
with a timeout; scenes are checked against the picture-book vocabulary and uploads by data.open_image (damaged,
truncated, decompression bombs); a prompt longer than the model reads is refused. Each is a 4xx with one line
saying what is wrong, and the server goes on. Each checkpoint is loaded once and shared by every client; its
clients take turns at it token by token, so none waits for another's whole description, none for another model,
and none is mixed up with another; a client that goes away mid-description stops its generation at the next token.
"""
import base64
import binascii
import io
import json
import os
import select
import socket
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

import data
import pictures
import picturebook
import sample
from checkpoint import load_checkpoint, model_from_checkpoint
from cli import UserError, parse_flags, run_cli

DEFAULTS = dict(
    host='127.0.0.1',       # 127.0.0.1: this computer only; 0.0.0.0: every network it is on (a classroom)
    port=8000,              # 0: any free port
    quiet=False,            # do not print a line per request
    measure=0,              # N > 0: do not serve; time N clients describing at once over HTTP (README, "Measured")
    checkpoint='out-tiny',  # with --measure: the checkpoint folder timed
)
ROOT = os.path.dirname(os.path.abspath(__file__))  # checkpoints are the out*/ folders here
PAGE = os.path.join(ROOT, 'serve.html')
MAX_BODY = 8 << 20          # bytes a request body may have (a photo of a few MB, base64-encoded)
READ_TIMEOUT = 20           # seconds a client may take to send its request
MAX_OBJECTS = 4             # objects a scene may hold, as in the picture book
KEEP_MODELS = 4             # checkpoints kept loaded at once (the least recently used goes first)
TEST_SCENES = [scene for _, _, scene, _, _ in picturebook.pages([('test', 12)])]  # data.py's first test scenes
ROUTES = ('/', '/api/setup', '/api/picture', '/api/describe')
TRAIN_HINT = 'no trained checkpoint here yet: train one with  python train.py --size=tiny  (minutes on a CPU)'


class Refused(Exception):
    """A request the server will not answer, with the HTTP status and one line saying why."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class ClientLeft(Exception):
    """The client closed its connection: stop working for it."""


class Turns:
    """A lock its waiters get in the order they asked for it (threading.Lock promises no order). A client holding
    the model passes its turn after every token, so clients describing at once take turns token by token: each sees
    its first word after one token of each client before it, not after their whole descriptions."""

    def __init__(self):
        self.changed, self.tickets, self.serving = threading.Condition(), 0, 0

    def __enter__(self):
        with self.changed:
            ticket, self.tickets = self.tickets, self.tickets + 1
            self.changed.wait_for(lambda: self.serving == ticket)

    def __exit__(self, *exc):
        with self.changed:
            self.serving += 1
            self.changed.notify_all()

    def pass_turn(self):
        self.__exit__()
        self.__enter__()


# -----------------------------------------------------------------------------
# Checkpoints: named by folder, loaded once, shared

class Models:
    """The checkpoints of root's out*/ folders, each loaded on first use and shared by every client (loaded again
    when its ckpt.pt changes: a run still training saves newer ones). Its clients take turns at it (Turns)."""

    def __init__(self, root):
        self.root, self.loaded, self.lock = os.path.realpath(root), OrderedDict(), threading.Lock()

    def names(self):
        return sorted(d for d in os.listdir(self.root) if d.startswith('out') and self.path(d))

    def path(self, name):
        """root/name/ckpt.pt if name is an out* folder of root holding one (resolved: no link leads elsewhere)."""
        folder = os.path.join(self.root, name)
        ckpt = os.path.realpath(os.path.join(folder, 'ckpt.pt'))
        inside = os.path.dirname(ckpt) == folder and os.path.dirname(folder) == self.root
        return ckpt if inside and name.startswith('out') and os.path.isfile(ckpt) else None

    def get(self, name):
        if not isinstance(name, str) or not name.startswith('out') or '/' in name or '\\' in name or '..' in name:
            raise Refused(403, f'checkpoint {str(name)[:60]!r}: give the name of an out* folder here, not a path')
        path = self.path(name)
        if path is None:
            raise Refused(404, f'no checkpoint {name}/ckpt.pt here; '
                          + (f"choose one of {', '.join(self.names())}" if self.names() else TRAIN_HINT))
        stamp = os.stat(path).st_mtime_ns
        with self.lock:
            m = self.loaded.get(name)
            if m is None or m.stamp != stamp:
                ckpt = load_checkpoint(path)
                model, tokenizer = model_from_checkpoint(ckpt)
                m = SimpleNamespace(name=name, model=model, tokenizer=tokenizer, stamp=stamp, turns=Turns(),
                                    step=ckpt.get('step'), style_token=ckpt.get('config', {}).get('style_token', True))
                self.loaded[name] = m
                while len(self.loaded) > KEEP_MODELS:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(name)
            return m


# -----------------------------------------------------------------------------
# What a request asks for, checked

def scene_of(scene):
    """A picture-book scene from a request, rebuilt from the vocabulary's own words (sample.checked_scene)."""
    checked = sample.checked_scene(scene, most=MAX_OBJECTS)
    if checked is None:
        raise Refused(400, f'not a picture-book scene: give a sky ({", ".join(picturebook.SKIES)}), a ground '
                      f'({", ".join(picturebook.GROUNDS)}) and 1 to {MAX_OBJECTS} objects, each a kind, colour, size '
                      'and place of the picture book')
    return checked


def picture_of(body, size):
    """The picture a request asks for, as the model reads it: (uint8 (size, size, 3), its scene or None). An upload
    is read and resized as sample.py reads a file (data.load_image)."""
    if 'upload' in body:
        upload = body['upload']
        if not isinstance(upload, str):
            raise Refused(400, 'upload: give the picture as a data URL (data:image/png;base64,...)')
        try:
            raw = base64.b64decode(upload.split(',', 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise Refused(400, 'upload: not base64; give the picture as a data URL (data:image/png;base64,...)')
        try:
            return data.load_image(io.BytesIO(raw), size, name='the upload'), None
        except UserError as e:
            raise Refused(422, f'{e}; upload a PNG or JPEG picture')
    scene = scene_of(body.get('scene'))
    return np.asarray(picturebook.draw_scene(scene, size)), scene


def number(body, key, default, lo, hi, kind=float):
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or kind is int and value != int(value) \
            or not lo <= value <= hi:
        raise Refused(400, f'{key}: give a {"whole " if kind is int else ""}number from {lo} to {hi}')
    return kind(value)


def png_url(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='PNG')
    return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()


def marked_words(tokenizer, ids, scene):
    """The words of a text given as token ids (pictures.words_of, as the attention maps count them), each as
    [its exact text, its mark: 0 states nothing, 1 part of a true fact, 2 of a false one], and the grounding line
    under the text (None without a scene)."""
    pieces = [tokenizer.decode([ids[i] for i in where]) for _, where in pictures.words_of(tokenizer, ids)]
    if scene is None:
        return [[p, 0] for p in pieces], None
    marks, counts = pictures.fact_marks(''.join(pieces), scene)
    ends = np.cumsum([len(p) for p in pieces])
    words = [[p, int(marks[end - len(p):end].max(initial=0))] for p, end in zip(pieces, ends)]  # false wins: 2 > 1
    return words, pictures.grounding_line(counts)


def client_gone(sock):
    """Whether the client has closed its connection (it sends nothing more once its request is read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b''
    except OSError:
        return True


# -----------------------------------------------------------------------------
# The server

class Handler(BaseHTTPRequestHandler):
    server_version = 'nanovlms'
    timeout = READ_TIMEOUT  # on the socket: a client that stalls mid-request is dropped, not waited for forever

    def do_GET(self):
        self.answer(lambda: self.route({'/': self.page, '/api/setup': self.vocabulary}))

    def do_POST(self):
        self.answer(lambda: self.route({'/api/picture': self.picture, '/api/describe': self.describe}, self.body()))

    def route(self, routes, *args):
        path = self.path.split('?', 1)[0]
        if path not in routes:
            raise Refused(405 if path in ROUTES else 404, f'{self.command} {path[:80]}: no such page here')
        return routes[path](*args)

    def answer(self, work):
        self.streaming = False  # True once a stream of events has begun: an error is then an event of it
        try:
            work()
        except Refused as e:
            self.send_json({'error': str(e)}, e.status)
        except UserError as e:
            self.send_json({'error': str(e)}, 400)
        except (ClientLeft, ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # a bug: said in one line, and the server goes on
            self.log_message('error: %s: %s', type(e).__name__, e)
            self.send_json({'error': f'the server failed: {type(e).__name__}'}, 500)

    def body(self):
        if self.headers.get('Transfer-Encoding'):
            raise Refused(411, 'send the body with a Content-Length')
        try:
            length = int(self.headers.get('Content-Length', ''))
        except ValueError:
            raise Refused(411, 'send the body with a Content-Length')
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True  # the rest of the body is never read
            raise Refused(413, f'the request is {length:,} bytes; at most {MAX_BODY:,} are read (a smaller picture?)')
        try:
            raw = self.rfile.read(length)
        except socket.timeout:
            raise Refused(408, f'the request body did not arrive within {READ_TIMEOUT} s')
        if len(raw) < length:
            raise Refused(400, f'the request body ended after {len(raw):,} of its {length:,} bytes')
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise Refused(400, f'the request is not JSON ({e})')
        if not isinstance(body, dict):
            raise Refused(400, 'the request is not a JSON object')
        return body

    def send_json(self, payload, status=200):
        try:
            if self.streaming:
                return self.event('error', payload)
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (ClientLeft, ConnectionError, socket.timeout):
            self.close_connection = True

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)

    # --- the answers

    def page(self):
        with open(PAGE, 'rb') as f:
            raw = f.read()
        self.send_response(200)
        self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.send_header('Content-Length', str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def vocabulary(self):  # (not 'setup': that name is the handler's own, run before every request)
        names = self.server.models.names()
        self.send_json({'kinds': picturebook.KINDS, 'colors': picturebook.COLORS, 'sizes': picturebook.OBJECT_SIZES,
                        'places': picturebook.PLACES, 'skies': picturebook.SKIES, 'grounds': picturebook.GROUNDS,
                        'max_objects': MAX_OBJECTS, 'tests': TEST_SCENES, 'checkpoints': names,
                        'hint': None if names else TRAIN_HINT, 'ramp': pictures.RAMP})

    def picture(self, body):
        image, scene = picture_of(body, int(number(body, 'size', 128, 16, 512, int)))
        self.send_json({'png': png_url(image), 'scene': scene})

    def describe(self, body):
        m = self.server.models.get(body.get('checkpoint'))
        cfg, tokenizer = m.model.config, m.tokenizer
        image, scene = picture_of(body, cfg.img_size)
        style = body.get('style', 'short')
        if style not in data.STYLE_TOKEN:
            raise Refused(400, 'style: give short or long')
        style = style if m.style_token else None  # trained without style tokens: no style to pick
        prompt = body.get('prompt', '')
        if not isinstance(prompt, str) or len(prompt) > 4 * cfg.block_size:
            raise Refused(400, f'prompt: give text of at most {cfg.block_size - 2} tokens')
        start = sample.start_tokens(tokenizer, style, prompt, cfg.block_size)  # a prompt too long is a UserError
        opts = dict(style=style, prompt=prompt, temperature=number(body, 'temperature', 0.7, 0, 2),
                    top_k=number(body, 'top_k', 20, 0, cfg.vocab_size, int),
                    max_new_tokens=number(body, 'max_new_tokens', 120, 1, cfg.block_size, int))
        self.send_response(200)
        self.send_header('Content-Type', 'text/event-stream')
        self.send_header('Cache-Control', 'no-store')
        self.end_headers()
        self.close_connection, self.streaming = True, True  # HTTP/1.0: the stream ends when the connection does
        self.event('picture', {'png': png_url(image), 'checkpoint': m.name, 'step': m.step, 'img_size': cfg.img_size,
                               'visual_tokens': cfg.visual_tokens})
        ids = start[1:]

        def on_token(nxt):  # (1,): the token just chosen
            if client_gone(self.connection):
                raise ClientLeft
            if int(nxt[0]) != data.EOT:
                ids.append(int(nxt[0]))
                words, _ = marked_words(tokenizer, ids, scene)
                self.event('words', {'words': words})
            m.turns.pass_turn()  # the next client's token, then this one's again
        began = time.perf_counter()
        try:
            with m.turns:  # this model's clients take turns, token by token
                if client_gone(self.connection):
                    raise ClientLeft
                text = sample.describe(m.model, tokenizer, image[None], on_token=on_token, **opts)[0]
                _, labels, maps, shares, about = pictures.attention_maps(m.model, tokenizer, image, ids, style)
        except (ClientLeft, ConnectionError):
            with self.server.stats_lock:
                self.server.stats['stopped'] += 1
            self.log_message('client left: stopped after %d tokens', len(ids) - len(start) + 1)
            raise
        words, grounding = marked_words(tokenizer, ids, scene)
        self.event('done', {'words': words, 'text': text, 'grounding': grounding, 'tokens': len(ids) - len(start) + 1,
                            'seconds': round(time.perf_counter() - began, 3),
                            'attention': {'labels': labels, 'maps': np.round(maps, 5).tolist(), 'about': about,
                                          'shares': [round(float(s), 4) for s in shares]}})
        with self.server.stats_lock:
            self.server.stats['described'] += 1

    def event(self, name, payload):
        try:
            self.wfile.write(f'event: {name}\ndata: {json.dumps(payload)}\n\n'.encode())
        except socket.timeout:  # a client that reads nothing for READ_TIMEOUT s is taken to have left
            raise ClientLeft from None


class LiveServer(ThreadingHTTPServer):
    daemon_threads = True  # a client still streaming does not keep the process alive at Ctrl-C
    request_queue_size = 64  # connections waiting to be let in (the default, 5, turns a class arriving at once away)

    def __init__(self, host, port, root=ROOT, quiet=False):
        super().__init__((host, port), Handler)
        self.models, self.quiet = Models(root), quiet
        self.stats, self.stats_lock = {'described': 0, 'stopped': 0}, threading.Lock()


def measure(name, n):
    """Time the server on 127.0.0.1 with checkpoint name: one client alone, then n at once (each a different test
    scene, greedy), each text checked against describing its picture alone; and sample.describe on the n pictures
    in one batch, the way sample.py describes a dataset. Prints what it measured."""
    import http.client
    server = LiveServer('127.0.0.1', 0, root=ROOT, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    m = server.models.get(name)
    scenes = [scene for _, _, scene, _, _ in picturebook.pages([('test', n)])]

    def client(scene, out):  # out: [seconds to the first words, seconds to done, text, tokens]
        began = time.perf_counter()
        c = http.client.HTTPConnection('127.0.0.1', server.server_address[1], timeout=600)
        c.request('POST', '/api/describe', json.dumps({'checkpoint': name, 'scene': scene, 'temperature': 0}))
        for line in c.getresponse():
            if line.startswith(b'event: words') and not out:
                out.append(time.perf_counter() - began)
            elif line.startswith(b'data: ') and b'"attention"' in line:
                done = json.loads(line[6:])
                out += [time.perf_counter() - began, done['text'], done['tokens']]
        c.close()
    alone = [[] for _ in range(5)]
    for out in alone:
        client(scenes[0], out)
    crowd = [[] for _ in scenes]
    threads = [threading.Thread(target=client, args=(scene, out)) for scene, out in zip(scenes, crowd)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    crowd_s = time.perf_counter() - began
    images = np.stack([np.asarray(picturebook.draw_scene(s, m.model.config.img_size)) for s in scenes])
    style = 'short' if m.style_token else None
    truth = [sample.describe(m.model, m.tokenizer, im[None], style, temperature=0)[0] for im in images]
    began = time.perf_counter()
    batch = sample.describe(m.model, m.tokenizer, images, style, temperature=0)
    batch_s = time.perf_counter() - began
    server.shutdown()
    server.server_close()
    right = sum(len(out) == 4 and out[2] == t for out, t in zip(crowd, truth))
    tokens = sum(out[3] for out in crowd if len(out) == 4)  # the words' tokens each description wrote
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f'{name} (step {m.step}), greedy short descriptions of picture-book test scenes, {torch.get_num_threads()} '
          f'torch threads')
    print(f'one client alone: first word after {1000 * median([o[0] for o in alone]):.0f} ms, the whole '
          f'description after {1000 * median([o[1] for o in alone]):.0f} ms (median of 5)')
    print(f'{n} clients at once: first word after {1000 * median([o[0] for o in crowd if o]):.0f} ms (median), '
          f'{1000 * max(o[0] for o in crowd if o):.0f} ms (last); {right} of {n} descriptions complete and the same as '
          f'describing each picture alone; {n} in {crowd_s:.2f} s: {n / crowd_s:.1f} descriptions/s, '
          f'{tokens / crowd_s:.0f} tokens/s')
    print(f"sample.py's batch (sample.describe on the {n} pictures at once): {batch_s:.2f} s: {n / batch_s:.1f} "
          f'descriptions/s, {tokens / batch_s:.0f} tokens/s; the same texts: '
          f'{sum(b == t for b, t in zip(batch, truth))} of {n}')


def main(argv):
    f = parse_flags(DEFAULTS, argv, minimum={'port': 0, 'measure': 0}, doc=__doc__, sources=['serve'])
    if f['measure']:
        return measure(f['checkpoint'], f['measure'])
    try:
        server = LiveServer(f['host'], f['port'], root=ROOT, quiet=f['quiet'])
    except OSError as e:
        raise UserError(f"cannot listen on {f['host']}:{f['port']} ({e.strerror}); give another --port") from None
    host, port = server.server_address[:2]
    names = server.models.names()
    print(f'nanovlms live page: http://{"127.0.0.1" if host == "127.0.0.1" else host}:{port}/  (Ctrl-C stops it)')
    if f['host'] not in ('127.0.0.1', 'localhost', '::1'):
        print(f"warning: listening on {f['host']}: anyone on this computer's networks can open the page and use "
              'its models (nothing else here is served)')
    print(f"checkpoints: {', '.join(names)}" if names else TRAIN_HINT)
    if names:
        server.models.get('out-tiny' if 'out-tiny' in names else names[0])  # loaded now: the first word comes fast
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == '__main__':
    run_cli(main)
