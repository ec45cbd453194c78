"""
One client for any OpenAI-compatible Chat Completions server, shared by build.py (writing descriptions) and
grade.py (grading them): GPT-4o as in the paper, a reasoning model, or a local open model; batch.py sends the same.

Calls to a paid API cost money and fail in many ways, so this file is about never paying twice and never losing
what was paid for. In order:
  1. the flags both scripts take, declared once;
  2. the endpoint: the key, read once; one request, read whole within a deadline and a size cap (fetch, which
     build.py's downloads use too), retried with backoff that honours Retry-After; faults no retry can fix stop the run;
  3. replies: the JSON object in a reply, and a picture as part of a request;
  4. money: the price of a model, an estimate said before anything is sent, and a question before spending;
  5. many requests: a pool of workers that appends each result to a log the moment it arrives, so an interrupted
     run (Ctrl-C, a full disk) keeps everything it paid for and the same command goes on where it stopped.
"""
import base64
import datetime
import email.utils
import html
import io
import ipaddress
import json
import os
import socket
import string
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed

import requests
import urllib3

from cli import MAX_DEPTH, UserError, loads, too_deep
from data import append_jsonl, open_image

# -----------------------------------------------------------------------------
# 1. The flags of every script that calls a chat model (build.py, grade.py add their own)

FLAGS = dict(
    base_url='https://api.openai.com/v1',  # any OpenAI-compatible server; the key comes from OPENAI_API_KEY
    model='gpt-4o',         # the paper's writer and judge
    workers=8,              # requests (and downloads) at once
    timeout=60.0,           # seconds to wait for a reply before trying again
    max_retries=6,          # retries of a request after a timeout, 429 or 5xx
    max_attempts=3,         # replies asked for per item before it counts as failed (a reply that breaks the rules is sent back)
    price_in=-1.0,          # USD per million input tokens, for the estimate (-1: the known price of --model)
    price_out=-1.0,         # USD per million output tokens
    yes=False,              # start spending without asking
    batch=False,            # send the requests as Batch API jobs (batch.py): half the price, replies within 24 hours; a reply that failed or broke the rules goes back out live
    batch_poll=60.0,        # with --batch: seconds between looks at a batch's progress
)
MINIMUM = {'workers': 1, 'max_attempts': 1, 'max_retries': 0, 'timeout': '>0', 'batch_poll': '>0'}  # impossible values of FLAGS

# -----------------------------------------------------------------------------
# 2. The endpoint. Faults split three ways: a request the server turned down is that image's problem (RequestFailed:
# the image is recorded as skipped); a fault no retry can fix (a refused key, no quota, an unknown model, a server
# that stays down) stops the whole run at once (UserError), before it burns through the dataset; everything else
# (429, 5xx, timeouts, dropped connections) is retried with exponential backoff that honours Retry-After.

BACKOFF = 1.0  # seconds before the first retry; doubled each time, at most a minute
MAX_REPLY = 16 << 20  # bytes of a reply read at most (a Chat Completions reply is a few kB, an error page a few more)


def api_key():
    """OPENAI_API_KEY, read once, here: the space or line break around it (a .env file saved with Windows line
    endings leaves a \\r) dropped. A key with a space or a control character inside is a UserError that does not
    show it: sent on, it would end in an error message that does."""
    key = os.environ.get('OPENAI_API_KEY', '').strip()
    if not key.isascii() or any(ch.isspace() or not ch.isprintable() for ch in key):
        raise UserError('OPENAI_API_KEY has a space, a line break or another character no key has inside it; set it '
                        'to the key alone')
    return key


def is_local(url):
    """Whether url's server is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urllib.parse.urlsplit(url).hostname or ''
    try:
        return host == 'localhost' or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TooLarge(requests.RequestException):
    """A reply longer than the bytes allowed for it."""


# The deadline of a request. requests' timeout bounds each wait for the next bytes, not the whole reply, so a server
# that sends a byte a second would hold a request for ever. fetch starts a timer at the request; when it goes off it
# shuts the request's socket down, which ends a read that is waiting at once. The connections below tell the timer
# their socket (a new connection each request, made in the thread that asks).
_request = threading.local()


class _Told:
    def connect(self):
        super().connect()
        watch = getattr(_request, 'watch', None)
        if watch is not None:
            watch['socket'] = self.sock
            if watch['expired']:
                self.sock.shutdown(socket.SHUT_RDWR)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = type('_HTTPConnection', (_Told, urllib3.connection.HTTPConnection), {})


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = type('_HTTPSConnection', (_Told, urllib3.connection.HTTPSConnection), {})


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {'http': _HTTPPool, 'https': _HTTPSPool}


def fetch(method, url, timeout, max_bytes=MAX_REPLY, write=None, stall=None, **kwargs):
    """One HTTP request, its reply read whole within timeout seconds of the start however slowly the server sends
    it, and at most max_bytes long (counted after decompression): the one reader of what comes from a server (a chat
    reply, a download). Returns the requests.Response with its content read. write(response), called once the
    headers are in, may return a function that takes each chunk of the body as it comes (a download into a file)
    instead. stall: seconds to wait for the next bytes (default: timeout). Raises requests.Timeout when the deadline
    passes, TooLarge over max_bytes, and requests' other errors for a connection that fails."""
    watch = {'socket': None, 'expired': False}

    def expire():
        watch['expired'] = True
        if watch['socket'] is not None:
            try:
                watch['socket'].shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    timer = threading.Timer(timeout, expire)
    _request.watch = watch
    timer.start()
    try:
        with requests.Session() as session:
            session.mount('http://', _Adapter())
            session.mount('https://', _Adapter())
            stall = stall or timeout
            with session.request(method, url, stream=True, timeout=(min(10.0, stall), stall), **kwargs) as r:
                if int(r.headers.get('Content-Length') or 0) > max_bytes:
                    raise TooLarge(f'the reply is {int(r.headers["Content-Length"]):,} bytes, over the '
                                   f'{max_bytes:,} allowed')
                size, chunks = 0, []
                to = (write and write(r)) or chunks.append
                for chunk in r.iter_content(1 << 16):
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f'the reply is over the {max_bytes:,} bytes allowed')
                    to(chunk)
                    if watch['expired']:
                        break
                if watch['expired']:
                    raise requests.Timeout
                r._content = b''.join(chunks)  # where requests keeps a body it has read: r.content, r.text see it
                return r
    except requests.RequestException:
        if watch['expired']:
            raise requests.Timeout(f'no whole reply within {timeout:g}s') from None
        raise
    finally:
        timer.cancel()
        _request.watch = None


REASONING = ('o1', 'o3', 'o4', 'gpt-5')  # OpenAI's reasoning models (by name): they take max_completion_tokens, no temperature
REASONING_TOKENS = 4000  # room a reasoning model gets to think on top of its reply (without it the reply can be empty)


def refused_field(content):
    """The body field a 400 says the model does not take: 'max_tokens' or 'temperature' (OpenAI's reasoning
    models' answer, code 'unsupported_parameter' or 'unsupported_value'), else None."""
    try:
        error = loads(content).get('error') or {}
        known = error.get('code') in ('unsupported_parameter', 'unsupported_value')
        return error['param'] if known and error.get('param') in ('max_tokens', 'temperature') else None
    except (ValueError, AttributeError):
        return None


def read_reply(content):
    """The text and token usage of a Chat Completions response (bytes or its parsed JSON). ValueError if it is not
    one; RequestFailed if the model refused (structured outputs' way to say no)."""
    try:
        reply = loads(content) if isinstance(content, (bytes, str)) else content
        message = reply['choices'][0]['message']
        used = reply.get('usage') or {}
        usage = {k: int(used.get(k) or 0) for k in ('prompt_tokens', 'completion_tokens')}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ValueError('not a Chat Completions response') from None
    if isinstance(message, dict) and message.get('refusal'):
        raise RequestFailed(f"the model refused: {message['refusal']}")
    if not isinstance(message, dict) or not isinstance(message.get('content'), str):
        raise ValueError('not a Chat Completions response')
    return message['content'], usage


class RequestFailed(Exception):
    """The server turned this one request down (a 4xx other than a key, quota or model fault)."""


class Stopped(Exception):
    """The run is stopping (Ctrl-C or a fatal fault elsewhere): this request gives up and records nothing."""


class ChatEndpoint:
    """An OpenAI-compatible Chat Completions endpoint, called from many threads at once."""

    def __init__(self, base_url, model, timeout=60.0, max_retries=6):
        self.url = base_url.rstrip('/') + '/chat/completions'
        self.model, self.timeout, self.max_retries = model, timeout, max_retries
        self.key = api_key()
        if not self.key and 'api.openai.com' in base_url:
            raise UserError('set OPENAI_API_KEY to your OpenAI API key, or point --base_url at a local server')
        if self.key and urllib.parse.urlsplit(self.url).scheme == 'http' and not is_local(self.url):
            print(f'warning: OPENAI_API_KEY goes to {urllib.parse.urlsplit(self.url).hostname} over plain HTTP, which '
                  'anyone on the way can read; use an https:// --base_url', file=sys.stderr)
        self.stop = threading.Event()  # set to make every waiting request give up: Ctrl-C, or a fatal fault
        self.answered = False  # until the server has answered once, a request it turns down stops the run
        self.refused = {'max_tokens', 'temperature'} if model.startswith(REASONING) else set()  # fields the model
        # refuses, known or learnt from the server's 400 (complete); the bodies of the rest of the run leave them out

    def redact(self, text):
        """Text safe to print or store: the API key never appears in logs, errors or files."""
        return text.replace(self.key, '[OPENAI_API_KEY]') if self.key else text

    def body(self, messages, response_format=None, max_tokens=600, temperature=None):
        """The JSON body of one request, as this model takes it: the live path and a Batch API line send the same."""
        body = {'model': self.model, 'messages': messages}
        if 'max_tokens' in self.refused:  # a reasoning model: its thinking counts against the limit too
            body['max_completion_tokens'] = max_tokens + REASONING_TOKENS
        else:
            body['max_tokens'] = max_tokens
        if response_format:
            body['response_format'] = response_format
        if temperature is not None and 'temperature' not in self.refused:
            body['temperature'] = temperature
        return body

    def complete(self, messages, response_format=None, max_tokens=600, temperature=None):
        """The reply's text and its token usage {'prompt_tokens', 'completion_tokens'}. A field the model refuses
        (a 400 'unsupported_parameter' or 'unsupported_value' naming max_tokens or temperature, as OpenAI's reasoning
        models answer) is remembered for the run and the request sent again at once without it: a 400 costs nothing."""
        headers, attempt = {'Authorization': f'Bearer {self.key}'} if self.key else {}, 0
        while True:
            if self.stop.is_set():
                raise Stopped
            wait = min(60.0, BACKOFF * 2 ** attempt)
            body = self.body(messages, response_format, max_tokens, temperature)
            try:
                r = fetch('POST', self.url, self.timeout, json=body, headers=headers)
            except requests.Timeout:
                problem = f'no whole reply within {self.timeout:g}s'
            except TooLarge as e:
                problem = str(e)
            except requests.RequestException as e:  # its message is never shown: it may hold the request's headers
                problem = f'cannot reach {self.url} ({type(e).__name__})'
            else:
                if r.status_code == 200:
                    try:
                        text, usage = read_reply(r.content)
                        self.answered = True
                        return text, usage
                    except RequestFailed:  # a refusal is an answer too
                        self.answered = True
                        raise
                    except ValueError:
                        problem = 'the server sent a reply that is not a Chat Completions response'
                elif r.status_code == 400 and (field := refused_field(r.content)) in body:  # the next body leaves it out
                    self.refused.add(field)
                    continue
                else:
                    problem = self._fault(r)
                    wait = _retry_after(r) or wait
            if attempt == self.max_retries:
                raise UserError(f'{problem}, {self.max_retries + 1} times in a row; finished work is saved: '
                                'run the same command again to go on')
            attempt += 1
            self.stop.wait(wait)

    def ask(self, messages, check, response_format=None, max_attempts=3, temperature=None, first=None):
        """Ask until a reply passes check(reply) -> (value, None) or (None, what is wrong). A reply that fails is sent
        back with what is wrong, up to max_attempts replies. Returns (value, None, usage) or (None, why, usage); a
        request the server turns down (RequestFailed) ends the asking with that as the why. first: a first reply paid
        for already (a batch's: (text, usage), or the RequestFailed it was)."""
        usage = {'prompt_tokens': 0, 'completion_tokens': 0}
        for attempt in range(max_attempts):
            try:
                if attempt == 0 and isinstance(first, RequestFailed):
                    raise first
                reply, used = first if attempt == 0 and first else \
                    self.complete(messages, response_format, temperature=temperature)
            except RequestFailed as e:
                return None, f'the server turned the request down: {e}', usage
            usage = {k: usage[k] + used[k] for k in usage}
            value, problem = check(reply)
            if problem is None:
                return value, None, usage
            messages = messages + [{'role': 'assistant', 'content': reply},
                                   {'role': 'user', 'content': f'Not quite: {problem}. Answer again, keeping every rule.'}]
        return None, f'{max_attempts} replies broke the rules, the last because {problem}', usage

    def _fault(self, r):
        """What an HTTP error means, said in one line; raises for the faults a retry cannot fix."""
        try:
            error = loads(r.content).get('error') or {}
            message, code = str(error.get('message', ''))[:300], str(error.get('code') or error.get('type') or '')
        except (ValueError, AttributeError):
            message, code = page_summary(r.text), ''
        said = self.redact(f'HTTP {r.status_code}' + (f": {' '.join(message.split())}" if message.strip() else ''))
        if r.status_code in (401, 403):
            raise UserError(f'the server refused the API key ({said}); set OPENAI_API_KEY to a valid key')
        if r.status_code == 429 and 'quota' in code + message:
            raise UserError(f'the account has no quota left ({said}); add credit or use another key')
        if r.status_code == 404:
            raise UserError(f'{self.url} or model {self.model!r} does not exist ({said}); check --base_url and --model')
        if r.status_code != 429 and r.status_code < 500:
            if not self.answered:  # the first request: more of the same would be turned down too
                raise UserError(f'the server turned down the first request ({said}); check --base_url and --model, '
                                'and that the server supports JSON-schema replies (response_format)')
            raise RequestFailed(said)
        return said


ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def page_summary(text):
    """An error body that is not JSON, in a few words for a one-line error: an HTML page's <title> (a proxy's
    "502 Bad Gateway"), 'an HTML error page' if it has none, else the start of the text."""
    text = text[:4096]  # a title is near the top; a pattern run over all of a long page took seconds
    head = text.translate(ASCII_LOWER)  # tags in any case, each character where it was
    start = head.find('<title')
    opened, end = head.find('>', start), head.find('</title>', start)
    if start != -1 and start < opened < end:
        text = html.unescape(text[opened + 1:end])
    elif any(tag in head for tag in ('<!doctype', '<html', '<head', '<body')):
        return 'an HTML error page'
    text = ' '.join(text.split())
    return text if len(text) <= 100 else text[:100] + '...'


def _retry_after(r):
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), at most 5 minutes; None if unsaid."""
    value = r.headers.get('Retry-After')
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(300.0, max(0.0, seconds))


# -----------------------------------------------------------------------------
# 3. Replies and pictures

def parse_json_reply(text):
    """The first JSON object in a model's reply, whether bare, in a ```json fence or inside prose. ValueError if none,
    saying so in words that can be sent back to the model."""
    decoder = json.JSONDecoder()
    start = text.find('{')
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
            deep = too_deep(obj)
        except json.JSONDecodeError:
            obj, deep = None, False
        except RecursionError:  # the parser's own stack ran out
            obj, deep = None, True
        if deep:
            raise ValueError(f'the reply is not the JSON object asked for: it is nested more than {MAX_DEPTH} deep')
        if isinstance(obj, dict):
            return obj
        start = text.find('{', start + 1)
    raise ValueError('the reply is not the JSON object asked for: there is no JSON object in it')


def image_content(path, max_side=512):
    """A picture as a Chat Completions message part: a JPEG at most max_side pixels wide, sent inline at low detail
    (a fixed 85 input tokens on GPT-4o). A missing or unreadable picture is a UserError."""
    im = open_image(path)
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format='JPEG', quality=85)
    url = 'data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode()
    return {'type': 'image_url', 'image_url': {'url': url, 'detail': 'low'}}


# -----------------------------------------------------------------------------
# 4. Money: what a run will cost, said before anything is sent

PRICES = {  # USD per million input and output tokens, OpenAI's list prices in 2025; check yours, or set --price_in/out
    'gpt-4o': (2.50, 10.00), 'gpt-4o-mini': (0.15, 0.60), 'gpt-4.1': (2.00, 8.00), 'gpt-4.1-mini': (0.40, 1.60),
    'gpt-4.1-nano': (0.10, 0.40),
}


def price(c):
    """USD per million (input, output) tokens for c.model, or None if unknown: half the list price with --batch."""
    listed = tuple(p / (1 + c.batch) for p in PRICES[c.model]) if c.model in PRICES else None
    return (c.price_in, c.price_out) if c.price_in >= 0 and c.price_out >= 0 else listed


def spent(usage, c):
    """' ($1.23)' for the tokens used so far, or '' where the price is unknown."""
    p = price(c)
    return f' (${(usage["prompt_tokens"] * p[0] + usage["completion_tokens"] * p[1]) / 1e6:,.2f})' if p else ''


def confirm(plan, c):
    """Say what a run will spend and ask to go on, unless c.yes. False if the user says no."""
    print(plan)
    if c.yes:
        return True
    if not sys.stdin.isatty():
        raise UserError('add --yes to start without being asked')
    if input('go on? [y/N] ').strip().lower() in ('y', 'yes'):
        return True
    print('nothing was sent')
    return False


def estimate(texts, with_image, reply_tokens, c):
    """What sending one request per text will take, said before any is spent: about 4 characters a token, 85 tokens a
    low-detail picture (with_image), reply_tokens written per reply, and one reply in ten retried."""
    tokens_in = 1.1 * sum(len(t) / 4 + (85 if with_image else 0) for t in texts)
    tokens_out = 1.1 * reply_tokens * len(texts)
    p = price(c)
    dollars = f'about ${(tokens_in * p[0] + tokens_out * p[1]) / 1e6:,.2f} at ${p[0]:g} in and ${p[1]:g} out per ' \
              'million tokens' if p else f'cost unknown: no price for {c.model} (set --price_in and --price_out)'
    return f'{len(texts):,} requests to {c.model} at {c.base_url}' + (' as Batch API jobs' if c.batch else '') + \
        f': about {tokens_in / 1e6:.2f}M input and {tokens_out / 1e6:.2f}M output tokens, {dollars}' + \
        ('; the replies come within 24 hours (the batch window)' if c.batch else '')


# -----------------------------------------------------------------------------
# 5. Many requests at once, every result on disk the moment it arrives

def run_jobs(chat, todo, job, log_path, c, words):
    """job(item) -> record, for every item, by c.workers threads at once. Each record is appended to log_path
    and flushed to disk the moment it is made, so an interrupted run keeps everything it paid for (a full disk stops
    the run in one line, like a fatal fault, keeping every record written before). The first item
    goes alone: a wrong key, model or URL costs one request, not one per worker. words: ('described', 'images',
    'skipped') says what the progress line counts; a record with a 'skipped' or 'failed' reason counts as the last."""
    lock = threading.Lock()
    totals = {'prompt_tokens': 0, 'completion_tokens': 0, 'done': 0, 'bad': 0}

    def work(item):
        if chat.stop.is_set():
            return
        try:
            record = job(item)
            with lock:  # one whole line at a time, on disk before the next
                append_jsonl(log_path, [record], f"the {totals['done'] + totals['bad']:,} results before it; this one "
                                                 'was paid for but could not be written')
                totals['bad' if 'skipped' in record or 'failed' in record else 'done'] += 1
                for k in ('prompt_tokens', 'completion_tokens'):
                    totals[k] += record['usage'][k]
        except Stopped:
            return
        except UserError:
            chat.stop.set()  # no other worker starts a request after a fatal fault or a full disk
            raise

    done, what, bad = words
    progress = Progress()
    work(todo[0])
    pool = ThreadPoolExecutor(c.workers)
    try:
        for future in as_completed([pool.submit(work, it) for it in todo[1:]]):
            future.result()
            progress(f"{done} {totals['done']:,}, {bad} {totals['bad']:,} of {len(todo):,} | "
                     f"{totals['prompt_tokens'] + totals['completion_tokens']:,} tokens{spent(totals, c)}")
    finally:
        chat.stop.set()  # waiting requests give up; those in flight finish and are written
        pool.shutdown(cancel_futures=True)
    progress(f"{done} {totals['done']:,} {what}, {bad} {totals['bad']:,}; {totals['prompt_tokens']:,} input and "
             f"{totals['completion_tokens']:,} output tokens{spent(totals, c)}", last=True)
    return totals


class Progress:
    """One status line rewritten in place, at most once a second, so a log file gets a line a second, not one per image."""

    def __init__(self):
        self.shown = 0.0

    def __call__(self, text, last=False):
        if last or time.time() - self.shown >= 1:
            print('\r' + text, end='\n' if last else '', flush=True)
            self.shown = time.time()
