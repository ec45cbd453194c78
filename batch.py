"""
OpenAI's Batch API for build.py and grade.py (--batch): the requests of a run sent as one job at half the list
price, its own much larger rate limits, every reply within 24 hours.

The requests are written as the Batch API's JSONL (one line each: custom_id, method, url, and the very body the live
path sends, chat.ChatEndpoint.body), uploaded (POST /files, purpose "batch"; more than MAX_REQUESTS requests or
MAX_BYTES bytes are split into several files, a batch each), and a batch is created for each (POST /batches,
completion_window 24h). The run polls (GET /batches/ID) with a progress line, downloads the output and error files
(GET /files/ID/content), and hands every reply to the script's own job as the first reply of its asking
(chat.ChatEndpoint.ask's first=): checked by the same rules, written to the same log the same way as a live run's.
A reply that breaks the rules is sent back live with what is wrong, as the live path does; a request that failed
in the batch, or that an expired or cancelled batch never reached, is sent live from the start.

Never paying twice: FOLDER/state.jsonl records each step the moment it happens, appended and on disk (fsync):
    {"part": K, "custom_ids": [...]}      the requests of part K, written to FOLDER/input-K.jsonl
    {"part": K, "file_id": "file-..."}    that file uploaded
    {"part": K, "creating": true}         its batch about to be created
    {"part": K, "batch_id": "batch_..."}  its batch created
    {"part": K, "status": "completed"}    the batch over, its output and errors in FOLDER/output-K.jsonl, errors-K.jsonl
A run killed at any moment and started again goes on from the last step recorded. A request recorded in a part is
never put in another. The one step whose reply a kill can lose is the batch's creation: a part that was being
created looks for a batch of its file (GET /batches) before it creates one. A file uploaded twice costs nothing.
"""
import json
import os
import time

import requests

import chat
from cli import UserError, loads, write_file
from data import append_jsonl, read_log

MAX_REQUESTS = 50_000  # requests in one batch file at most (the API's limit)
MAX_BYTES = 200 << 20  # bytes in one batch file at most (the API's limit)
URL = '/v1/chat/completions'  # the endpoint every line goes to
OVER = ('completed', 'failed', 'expired', 'cancelled')  # a batch's statuses once it will change no more
TRANSFER_SECONDS = 3600  # the longest an upload or a download may take (a 200 MB file on a slow line)
MAX_DOWNLOAD = 2 << 30  # bytes of an output or error file at most (50,000 replies of a few kB are a few hundred MB)


def read_parts(folder):
    """part -> everything recorded of it: custom_ids, file_id, batch_id, status."""
    def steps(records):
        if any(not isinstance(r.get('part'), int) for r in records):
            raise UserError(f'{folder}/state.jsonl holds records that are not batch steps; move the folder away')
    parts = {}
    for r in read_log(os.path.join(folder, 'state.jsonl'), check=steps):
        parts.setdefault(r['part'], {}).update(r)
    return parts


def holds(p, c):
    """Whether part p holds its requests for this run: a batch's (made, or perhaps made), or any part with --batch
    (a part not yet uploaded is uploaded). A run without --batch sends the requests of a part never made live."""
    return c.batch or 'batch_id' in p or 'creating' in p


def fresh(folder, todo, ident, c):
    """The items of todo that no batch holds: what a run has yet to pay for."""
    held = {i for p in read_parts(folder).values() if holds(p, c) for i in p['custom_ids']}
    return [it for it in todo if ident(it) not in held]


def run(endpoint, todo, ident, request, job, log_path, folder, c, words):
    """With c.batch, send the items of todo that no batch holds as batches; wait for every batch that holds one of
    todo (a live run too: its replies are paid for); then make each item's record with job(item, first) -> record,
    first its batch reply (None: none came, and the job asks live). ident(item): its custom_id; request(item):
    chat.ChatEndpoint.ask's messages, response_format and temperature for it (a UserError: no request can be made,
    and the job says so)."""
    os.makedirs(folder, exist_ok=True)
    state = os.path.join(folder, 'state.jsonl')
    parts = read_parts(folder)
    def lines():  # one at a time: 28,000 requests with their pictures are about a gigabyte
        for item in fresh(folder, todo, ident, c) if c.batch else []:
            try:
                body = endpoint.body(**request(item))
            except UserError:
                continue
            yield ident(item), json.dumps({'custom_id': ident(item), 'method': 'POST', 'url': URL, 'body': body}) + '\n'
    for k, ids in write_parts(folder, lines(), max(parts, default=-1) + 1):
        record(state, parts, {'part': k, 'custom_ids': ids})
    wanted = {ident(it) for it in todo}
    live = [k for k, p in sorted(parts.items()) if wanted & set(p['custom_ids']) and holds(p, c)]
    if not c.batch and live:
        print(f'{len(wanted & {i for k in live for i in parts[k]["custom_ids"]}):,} of these requests are in a batch '
              f'({folder}): its replies are collected, not paid for again')
    api = Api(endpoint, c, folder)
    for k in live:
        p = parts[k]
        if 'file_id' not in p:
            name = f'input-{k}.jsonl'
            with open(os.path.join(folder, name), 'rb') as f:
                uploaded = api.call('POST', '/files', data={'purpose': 'batch'},
                                    files={'file': (name, f, 'application/jsonl')}, timeout=TRANSFER_SECONDS)
            record(state, parts, {'part': k, 'file_id': api.named(uploaded, 'file')})
        if 'batch_id' not in p:
            made = 'creating' in p and api.find(p['file_id'])  # a kill may have hidden the batch made last time
            if not made:
                record(state, parts, {'part': k, 'creating': True})
                made = api.call('POST', '/batches', json={'input_file_id': p['file_id'], 'endpoint': URL,
                                                          'completion_window': '24h'})
            record(state, parts, {'part': k, 'batch_id': api.named(made, 'batch')})
            remove_quietly(os.path.join(folder, f'input-{k}.jsonl'))  # uploaded: the API keeps it now
    wait(api, parts, [k for k in live if 'status' not in parts[k]], state, c)
    firsts = {}
    for k in live:
        for name in (f'output-{k}.jsonl', f'errors-{k}.jsonl'):
            firsts.update(replies(os.path.join(folder, name), wanted))
    print(f'{len(firsts):,} of {len(todo):,} replies came from the batches; each is checked as a live one is, and what '
          'failed or broke a rule goes out live')
    return chat.run_jobs(endpoint, todo, lambda item: job(item, firsts.get(ident(item))), log_path, c, words)


def write_parts(folder, lines, k):
    """Write the (custom_id, line) pairs into FOLDER/input-K.jsonl, input-K+1.jsonl, ..., each of at most
    MAX_REQUESTS lines and MAX_BYTES bytes, each whole on disk (cli.write_file) before it is yielded as (K, its
    custom_ids)."""
    lines = iter(lines)
    pending = next(lines, None)
    while pending:
        ids = []

        def fill(f):
            nonlocal pending
            size = 0
            while pending and not (ids and (len(ids) == MAX_REQUESTS or size + len(pending[1].encode()) > MAX_BYTES)):
                f.write(pending[1])
                ids.append(pending[0])
                size += len(pending[1].encode())
                pending = next(lines, None)
        write_file(os.path.join(folder, f'input-{k}.jsonl'), fill)
        yield k, ids
        k += 1


def record(state, parts, step):
    """One step, on disk before anything else happens, and in parts."""
    append_jsonl(state, [step], 'every step before it; a rerun goes on from there')
    parts.setdefault(step['part'], {}).update(step)


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def wait(api, parts, pending, state, c):
    """Poll the pending parts' batches every c.batch_poll seconds, with a progress line, until each is over; then
    download its output and errors and record it. A batch that expired, failed or was cancelled is said in one line;
    what it finished is kept."""
    progress, batches = chat.Progress(), {}
    while pending:
        for k in pending:
            batches[k] = api.call('GET', f"/batches/{parts[k]['batch_id']}")
        counts = [b['request_counts'] if isinstance(b.get('request_counts'), dict) else {} for b in batches.values()]
        done, failed, total = (sum(int(number(n.get(w))) for n in counts) for w in ('completed', 'failed', 'total'))
        began = min(number(b.get('created_at')) or time.time() for b in batches.values())
        status = ', '.join(sorted({str(b.get('status')) for b in batches.values()}))
        elapsed = int(time.time() - began)
        progress(f'batch {status}: {done:,} of {total:,} requests done, {failed:,} failed | '
                 f'{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d} since it was created (24 h at most)')
        for k in [k for k in pending if batches[k].get('status') in OVER]:
            b = batches[k]
            for key, name in (('output_file_id', 'output'), ('error_file_id', 'errors')):
                if b.get(key):
                    api.download(b[key], os.path.join(api.folder, f'{name}-{k}.jsonl'))
            if b['status'] != 'completed':
                errors = b['errors'].get('data') if isinstance(b.get('errors'), dict) else None
                said = errors[0].get('message') if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
                finished = len(replies(os.path.join(api.folder, f'output-{k}.jsonl'), set(parts[k]['custom_ids'])))
                print(f"\nbatch {parts[k]['batch_id']} {b['status']}" + (f' ({str(said)[:200]})' if said else '') +
                      f'; the {finished:,} replies it finished are kept, the rest go out live')
            record(state, parts, {'part': k, 'status': b['status']})
            pending.remove(k)
        if pending:
            time.sleep(c.batch_poll)
    if batches:
        progress('batches over', last=True)


def number(x):
    """A number the server sent, or 0 where it sent something else."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def replies(path, wanted):
    """custom_id -> first reply for ask: (text, usage), or the RequestFailed of a refusal; the lines of an output
    or error file that failed, or are not a Chat Completions reply, are left out (sent live)."""
    found = {}
    if not os.path.exists(path):
        return found
    with open(path, 'rb') as f:
        for line in f:
            try:
                r = loads(line)
                if r['custom_id'] in wanted and not r.get('error') and r['response']['status_code'] == 200:
                    found[r['custom_id']] = chat.read_reply(r['response']['body'])
            except chat.RequestFailed as e:
                found[r['custom_id']] = e
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
    return found


class Api:
    """The Files and Batches endpoints beside the endpoint's Chat Completions, retried like a chat request."""

    def __init__(self, endpoint, c, folder):
        self.base = endpoint.url[:-len('/chat/completions')]
        self.endpoint, self.c, self.folder = endpoint, c, folder
        self.headers = {'Authorization': f'Bearer {endpoint.key}'} if endpoint.key else {}

    def call(self, method, path, timeout=None, write=None, **kwargs):
        """The JSON reply to one request (with write: the response, its body written by write)."""
        for attempt in range(self.c.max_retries + 1):
            wait = min(60.0, chat.BACKOFF * 2 ** attempt)
            try:
                for part in (kwargs.get('files') or {}).values():
                    part[1].seek(0)  # an upload tried again sends the file from its start
                r = chat.fetch(method, self.base + path, timeout or self.c.timeout, MAX_DOWNLOAD if write else chat.MAX_REPLY,
                               write, self.c.timeout, headers=self.headers, **kwargs)
            except requests.RequestException as e:
                problem = f'cannot reach {self.base + path} ({type(e).__name__})'
            else:
                if r.status_code == 200:
                    try:
                        reply = r if write else loads(r.content)
                    except ValueError:
                        reply = None
                    if write or isinstance(reply, dict):
                        return reply
                    problem = f'{self.base + path} sent a reply that is not a JSON object'
                elif r.status_code == 429 or r.status_code >= 500:
                    problem, wait = f'HTTP {r.status_code} from {self.base + path}', chat._retry_after(r) or wait
                else:
                    try:
                        said = str((loads(r.content).get('error') or {}).get('message'))[:300]
                    except (ValueError, AttributeError):
                        said = chat.page_summary(r.text)
                    raise UserError(self.endpoint.redact(f'{method} {self.base + path}: HTTP {r.status_code}: {said}; '
                                                         f'every batch step so far is in {self.folder}'))
            if attempt < self.c.max_retries:
                time.sleep(wait)
        raise UserError(f'{problem}, {self.c.max_retries + 1} times in a row; every batch step so far is in '
                        f'{self.folder}: run the same command again to go on')

    def named(self, made, what):
        """The id of the file or batch the server says it made."""
        if not isinstance(made, dict) or not isinstance(made.get('id'), str):
            raise UserError(f'{self.base} made a {what} and did not say its id; every batch step so far is in '
                            f'{self.folder}: run the same command again to go on')
        return made['id']

    def find(self, file_id):
        """The batch made of file_id, if one was made (a run killed before it could record it), else None."""
        after = None
        while True:
            page = self.call('GET', '/batches', params={'limit': 100, **({'after': after} if after else {})})
            for b in page.get('data') or []:
                if b.get('input_file_id') == file_id:
                    return b
            if not page.get('has_more') or not page.get('data'):
                return None
            after = page['data'][-1]['id']

    def download(self, file_id, path):
        """A file's content into path, whole or not at all (a kill leaves path.part, written again next time)."""
        with open(path + '.part', 'wb') as f:
            def start(r):  # each try writes the file from its start
                f.seek(0)
                f.truncate()
                return f.write if r.status_code == 200 else None
            self.call('GET', f'/files/{file_id}/content', TRANSFER_SECONDS, start)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + '.part', path)
