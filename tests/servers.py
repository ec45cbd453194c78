"""
Real HTTP servers on 127.0.0.1 for the tests, each in a thread of the test process: COCO's file server (caption
annotations and images, with HTTP ranges and dropped connections, and, hostile, file names that climb out of the
dataset folder and a picture that is also a Python program) and a Chat Completions endpoint that plays a script of
replies and faults (hostile ones too: a huge reply, one that trickles in, deep JSON, a long error page). The code
under test talks to them exactly as it talks to images.cocodataset.org and api.openai.com.
"""
import email.parser
import io
import json
import os
import re
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

SHORT = 'A little dog runs on the soft green grass. He wants to catch the red ball. The sun is warm and bright.'
LONG = ('A happy brown dog runs across the wide green park. He holds a bright red ball in his mouth. A little girl '
        'claps her hands and laughs with joy. The sun is warm, and soft white clouds float slowly by. The dog drops '
        'the ball at her feet and waits for her. Soon they will play again until it is time to go home for dinner.')
TOO_LONG = ' '.join(['The big dog runs and runs on the grass all day long.'] * 4)  # 44 words, 4 sentences


class Server:
    """A ThreadingHTTPServer on a free port of 127.0.0.1; `url` is its address, `log` what it was asked."""

    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.httpd.handle_error = lambda request, address: None  # a client that hung up (a timeout test) is no news
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.log = []
        self.lock = threading.Lock()
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # close() waits a poll at most

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# -----------------------------------------------------------------------------
# COCO: /annotations/annotations_trainval2017.zip and /train2017/<file_name>

# An X11 bitmap (Pillow reads it as a 8x1 picture) that is also a Python program: saved as a .py file where Python
# looks for modules, it runs on the next import.
XBM_PYTHON = b'#define x_width 8\n#define x_height 1\nx = """static char x_bits[] = {\n0x00 };"""\nprint("this ran")\n'


def coco_files(n_images=16, n_few=3, hostile=()):
    """The files of a small COCO: n_images images with five captions and n_few with only three (never picked), then
    one image with five captions for each file name in hostile, served as XBM_PYTHON."""
    images, annotations, files = [], [], {}
    for k, name in enumerate(hostile, n_images + n_few + 1):
        images.append({'id': k, 'file_name': name})
        annotations += [{'id': 100 * k + j, 'image_id': k, 'caption': f'A cat number {k} sleeps. '} for j in range(5)]
        files[f'/train2017/{name}'] = files[f'/train2017/{os.path.basename(name)}'] = XBM_PYTHON  # asked either way
    for i in range(1, n_images + n_few + 1):
        name = f'{i:012d}.jpg'
        images.append({'id': i, 'file_name': name, 'coco_url': f'http://images.cocodataset.org/train2017/{name}'})
        for k in range(5 if i <= n_images else 3):
            annotations.append({'id': 100 * i + k, 'image_id': i, 'caption': f'A dog number {i} plays with ball {k} in a park. '})
        im = Image.new('RGB', (48, 40), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        im.paste((255, 255, 255), (8, 8, 8 + 2 * i % 30, 20))
        buf = io.BytesIO()
        im.save(buf, format='JPEG')
        files[f'/train2017/{name}'] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('annotations/captions_train2017.json', json.dumps({'images': images, 'annotations': annotations}))
        z.writestr('annotations/instances_train2017.json', os.urandom(300_000))  # the real archive holds more than captions
    files['/annotations/annotations_trainval2017.zip'] = buf.getvalue()
    return files


class CocoHandler(_Quiet):
    def do_GET(self):
        server = self.server.owner
        with server.lock:
            server.log.append((self.path, self.headers.get('Range')))
            cut = self.path in server.cut
            server.cut.discard(self.path)
        body = server.files.get(self.path)
        if body is None:
            return self.send(404, b'not found')
        start = 0
        m = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range') or '')
        if m:
            start = int(m.group(1))
            if start >= len(body):
                return self.send(416, b'')
        part = body[start:]
        self.send_response(206 if m else 200)
        if m:
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        self.send_header('Content-Length', str(len(part)))
        self.end_headers()
        if cut:  # the connection drops half-way through
            self.wfile.write(part[:len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(part)


def coco_server(**kw):
    server = Server(CocoHandler)
    server.files = coco_files(**kw)
    server.cut = set()
    return server


# -----------------------------------------------------------------------------
# Chat Completions: POST /v1/chat/completions

def chat_reply(body, content):
    return {'id': 'chatcmpl-test', 'object': 'chat.completion', 'model': body.get('model'),
            'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': content}, 'finish_reason': 'stop'}],
            'usage': {'prompt_tokens': 100, 'completion_tokens': 50, 'total_tokens': 150}}


def descriptions(short=SHORT, long=LONG):
    return json.dumps({'short': short, 'long': long})


class ChatHandler(_Quiet):
    def do_POST(self):
        server = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        key = (self.headers.get('Authorization') or '').removeprefix('Bearer ')
        with server.lock:
            server.log.append({'time': time.time(), 'body': body, 'key': key})
            step = server.script.pop(0) if server.script and key == server.key else server.default
        if self.path != '/v1/chat/completions':
            return self.error(404, 'Unknown endpoint', 'unknown_url')
        if key != server.key:
            return self.error(401, f'Incorrect API key provided: {key}.', 'invalid_api_key')
        if 'max_tokens' in server.refuses and 'max_tokens' in body:  # as OpenAI's reasoning models answer
            return self.error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                              "'max_completion_tokens' instead.", 'unsupported_parameter', param='max_tokens')
        if 'temperature' in server.refuses and body.get('temperature', 1) != 1:
            return self.error(400, f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                              "model. Only the default (1) value is supported.", 'unsupported_value', param='temperature')
        if 'max_completion_tokens' in server.refuses and 'max_completion_tokens' in body:  # a server that knows only max_tokens
            return self.error(400, "Unrecognized request argument supplied: max_completion_tokens", 'invalid_request_error')
        time.sleep(server.delay)
        kind, arg = step if isinstance(step, tuple) else (step, None)
        if kind == 'sleep':  # longer than the client waits; the reply comes too late
            time.sleep(arg)
            kind = 'good'
        if kind == '429':
            return self.error(429, 'Rate limit reached. Please try again later.', 'rate_limit_exceeded',
                              [('Retry-After', str(arg))])
        if kind == 'quota':
            return self.error(429, 'You exceeded your current quota.', 'insufficient_quota')
        if kind in ('400', '500', '503'):
            return self.error(int(kind), f'The server says {kind}.', 'server_error')
        if kind == 'html502':  # a proxy in front of the server says it is down, as a web page
            page = b'<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad Gateway</h1></center>\n' \
                   b'<hr><center>nginx/1.25.3</center>\n</body>\n</html>\n'
            return self.send(502, page, [('Content-Type', 'text/html')])
        if kind == 'broken':  # 200, but not a Chat Completions response
            return self.send(200, b'<html>gateway hiccup</html>')
        if kind == 'big':  # a 200 with no length that goes on for arg bytes (or until the client hangs up)
            return self.stream(b'{"choices": [{"message": {"content": "' + b' ' * (1 << 16), arg, 1 << 16)
        if kind == 'trickle':  # the whole reply, status line first, one byte every arg seconds
            reply = json.dumps({'choices': [{'message': {'role': 'assistant', 'content': descriptions()}}]}).encode()
            head = f'HTTP/1.1 200 OK\r\nContent-Length: {len(reply)}\r\n\r\n'.encode()
            self.close_connection = True
            for i in range(len(head + reply)):
                self.wfile.write((head + reply)[i:i + 1])
                self.wfile.flush()
                time.sleep(arg)
            return
        if kind == 'deep':  # a body nested arg deep
            return self.send(200, b'[' * arg + b']' * arg, [('Content-Type', 'application/json')])
        if kind == 'page':  # a 500 whose body is an HTML error page arg bytes long, all its tags left open
            return self.send(500, (b'<html><title>' * (arg // 13 + 1))[:arg], [('Content-Type', 'text/html')])
        if kind == 'refusal':  # how structured outputs decline
            message = {'role': 'assistant', 'content': None, 'refusal': "I'm sorry, I can't help with that."}
            return self.send(200, json.dumps({'choices': [{'index': 0, 'message': message}]}).encode())
        if kind == 'answer':  # server.answer(body) says what
            kind, arg = 'content', server.answer(body)
        content = {'good': descriptions(), 'fenced': f'```json\n{descriptions()}\n```',
                   'prose': f'Here are the descriptions you asked for:\n{descriptions()}\nI hope they help.',
                   'malformed': 'Sure! The short one: a dog runs. The long one: a dog runs and runs.',
                   'long': descriptions(short=TOO_LONG), 'content': arg}[kind]
        self.send(200, json.dumps(chat_reply(body, content)).encode(), [('Content-Type', 'application/json')])

    def stream(self, chunk, total, size):
        """A 200 without a length, chunk then spaces until total bytes are sent or the client hangs up."""
        self.send_response(200)
        self.send_header('Connection', 'close')
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(chunk)
            for _ in range((total - len(chunk)) // size):
                self.wfile.write(b' ' * size)
        except OSError:
            pass

    def error(self, status, message, code, headers=(), param=None):
        body = {'error': {'message': message, 'type': 'invalid_request_error' if status == 400 else code,
                          'param': param, 'code': code}}
        self.send(status, json.dumps(body).encode(), [('Content-Type', 'application/json'), *headers])


def chat_server(key='sk-test-0123456789', script=(), delay=0.0, refuses=()):
    """A Chat Completions server that accepts `key`; each request takes the next step of `script` ('good',
    'fenced', 'prose', 'malformed', 'broken', 'refusal', 'long', ('429', seconds), 'quota', '400', '500', '503',
    'html502', ('sleep', seconds), ('content', text), and the hostile ('big', bytes), ('trickle', seconds a byte),
    ('deep', depth), ('page', bytes)), then server.default ('good') once the script is spent. refuses: body fields
    it turns down with a 400 ('max_tokens', 'temperature' as OpenAI's reasoning models do; 'max_completion_tokens' as
    a server that knows only max_tokens), taking no step of the script."""
    server = Server(ChatHandler)
    server.key, server.script, server.delay, server.default = key, list(script), delay, 'good'
    server.refuses = set(refuses)
    return server


# -----------------------------------------------------------------------------
# OpenAI's Files and Batches endpoints, beside Chat Completions: POST /v1/files, POST /v1/batches, GET /v1/batches,
# GET /v1/batches/ID, GET /v1/files/ID/content, with the objects of OpenAI's API reference.

class BatchHandler(ChatHandler):
    def do_POST(self):
        server = self.server.owner
        if self.path == '/v1/chat/completions':
            return super().do_POST()
        if (self.headers.get('Authorization') or '') != f'Bearer {server.key}':
            return self.error(401, 'Incorrect API key provided.', 'invalid_api_key')
        raw = self.rfile.read(int(self.headers['Content-Length']))
        with server.lock:
            if self.path == '/v1/files':  # multipart/form-data: purpose, and the file
                form = email.parser.BytesParser().parsebytes(
                    b'Content-Type: ' + self.headers['Content-Type'].encode() + b'\r\n\r\n' + raw)
                fields = {p.get_param('name', header='content-disposition'): p for p in form.get_payload()}
                content = fields['file'].get_payload(decode=True)
                made = {'id': f'file-{len(server.files)}', 'object': 'file', 'bytes': len(content),
                        'created_at': int(time.time()), 'filename': fields['file'].get_filename(),
                        'purpose': fields['purpose'].get_payload(decode=True).decode()}
                server.files[made['id']] = content
                server.uploads.append({'form': sorted(fields), 'file': made,
                                       'content_type': self.headers['Content-Type'].split(';')[0]})
                event = 'upload'
            elif self.path == '/v1/batches':
                asked = json.loads(raw)
                made = {'id': f'batch_{len(server.batches)}', 'object': 'batch', 'endpoint': asked['endpoint'],
                        'errors': None, 'input_file_id': asked['input_file_id'],
                        'completion_window': asked['completion_window'], 'status': 'validating', 'output_file_id': None,
                        'error_file_id': None, 'created_at': int(time.time()), 'request_counts':
                        {'total': 0, 'completed': 0, 'failed': 0}, 'metadata': None, 'asked': asked}
                server.batches[made['id']] = made
                event = 'create'
            else:
                return self.error(404, 'Unknown endpoint', 'unknown_url')
        server.hook(event)
        self.send(200, json.dumps({k: v for k, v in made.items() if k != 'asked'}).encode())

    def do_GET(self):
        server = self.server.owner
        if (self.headers.get('Authorization') or '') != f'Bearer {server.key}':
            return self.error(401, 'Incorrect API key provided.', 'invalid_api_key')
        path = self.path.split('?')[0]
        with server.lock:
            if path == '/v1/batches':
                listed = [{k: v for k, v in b.items() if k != 'asked'} for b in reversed(server.batches.values())]
                reply, event = {'object': 'list', 'data': listed, 'first_id': listed[0]['id'] if listed else None,
                                'last_id': listed[-1]['id'] if listed else None, 'has_more': False}, 'list'
            elif path.startswith('/v1/batches/') and path[12:] in server.batches:
                reply, event = {k: v for k, v in self.advance(server, server.batches[path[12:]]).items() if k != 'asked'}, 'poll'
            elif path.startswith('/v1/files/') and path.endswith('/content') and path[10:-8] in server.files:
                reply, event = server.files[path[10:-8]], 'download'
            else:
                return self.error(404, f'No such object: {path}', 'not_found')
        server.hook(event)
        self.send(200, reply if isinstance(reply, bytes) else json.dumps(reply).encode())

    def advance(self, server, b):
        """Each look moves a batch on: validating, in_progress (server.step requests a look), finalizing, completed
        (or expired after server.expire requests), its output and error files written."""
        lines = [json.loads(x) for x in server.files[b['input_file_id']].splitlines()]
        counts = b['request_counts']
        if b['status'] == 'validating':
            b['status'], counts['total'] = 'in_progress', len(lines)
        elif b['status'] == 'in_progress':
            counts['completed'] = min(len(lines), server.expire, counts['completed'] + server.step)
            if counts['completed'] == min(len(lines), server.expire):
                b['status'] = 'finalizing'
        elif b['status'] == 'finalizing':
            out, errors = [], []
            for n, line in enumerate(lines):
                result = {'id': f'batch_req_{b["id"]}_{n}', 'custom_id': line['custom_id'], 'response': None, 'error': None}
                if n >= server.expire:
                    errors.append(result | {'error': {'code': 'batch_expired', 'message': 'This request could not be '
                                                      'executed before the completion window expired.'}})
                elif line['custom_id'] in server.fail:
                    errors.append(result | {'response': {'status_code': 500, 'request_id': f'req_{n}', 'body': {
                        'error': {'message': 'The server had an error.', 'type': 'server_error', 'code': None}}}})
                else:
                    server.seen.append(line)
                    out.append(result | {'response': {'status_code': 200, 'request_id': f'req_{n}',
                                                      'body': chat_reply(line['body'], server.answer(line['body']))}})
            counts['failed'] = len(errors) - max(0, len(lines) - server.expire)
            counts['completed'] = len(out)
            for name, results in (('output_file_id', out), ('error_file_id', errors)):
                if results:
                    b[name] = f'file-{len(server.files)}'
                    server.files[b[name]] = ''.join(json.dumps(r) + '\n' for r in results).encode()
            b['status'] = 'expired' if len(lines) > server.expire else 'completed'
        return b


def batch_server(answer, key='sk-test-0123456789', step=20, expire=10 ** 9, fail=()):
    """Chat Completions, Files and Batches on one server: answer(body) -> the reply's content for a chat request
    (live or a batch's line); a batch completes step requests a look, expires after its first expire, and its lines
    whose custom_id is in fail end in the error file with a 500. server.hook(event) is called just before each
    reply of an 'upload', 'create', 'list', 'poll' or 'download'; server.batches, server.uploads, server.files,
    server.seen (the batch lines answered) are what it was sent."""
    server = chat_server(key=key)
    server.httpd.RequestHandlerClass = BatchHandler
    server.answer, server.default, server.step, server.expire, server.fail = answer, 'answer', step, expire, set(fail)
    server.files, server.batches, server.uploads, server.seen, server.hook = {}, {}, [], [], lambda event: None
    return server
