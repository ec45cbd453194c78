"""
The command line every script shares, kept apart from the model as nanoGPT keeps its configurator apart.

A script's settings are a plain dict of defaults, each with a one-line comment beside it in the source. A user
overrides any of them as --key=value (the value is converted to the default's type), a boolean as a bare --key,
and --size=NAME first applies a preset, so explicit flags win over it. --help prints the script's usage lines (the
indented commands of its docstring) and every flag with its default and its comment, read from the source.

A mistake the user can make (a flag, a path, a file) is a UserError, and run_cli prints it as one line; so is a
write that fails (a full disk), said with what was kept (write_failed). The --device flag means the same
everywhere (pick_device). What comes in and goes out takes one safe way each: a path read from data is kept
inside its folder (inside), JSON from outside is parsed never deeper than MAX_DEPTH (loads), a file is replaced
whole under a temporary name of this process's own (write_file, temporary), and two runs that would write the same
place are kept apart by one lock (hold).
"""
import contextlib
import difflib
import errno
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import uuid


class UserError(Exception):
    """Something the user can fix (a flag, a path, a file): printed as one line, never a traceback."""


class ShowHelp(Exception):
    """--help or -h was given: run_cli prints the help and exits 0."""


def parse_flags(defaults, argv, presets=None, minimum=None, doc='', sources=()):
    """Return defaults overridden by argv.

    presets:  NAME -> dict of values that --size=NAME applies before the explicit flags (keys not in defaults are
              left out, so one preset table can serve scripts that take fewer flags).
    minimum:  flag -> the lowest value it may take (0: it cannot be negative; 1: it must be at least 1), or '>0'
              for a value that must be more than zero.
    doc, sources: what --help shows: the usage lines of doc, and the comments beside the defaults in the modules
              named in sources, e.g. ['train', 'model'] (the first module that comments a flag explains it)."""
    if '--help' in argv or '-h' in argv:
        raise ShowHelp(help_text(defaults, doc, sources, presets))
    pairs = []
    for arg in argv:
        if not arg.startswith('--') or arg == '--':
            raise UserError(f'unexpected argument {arg!r}: flags are written --key=value (python {_script()} --help)')
        key, has_value, value = arg[2:].partition('=')
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            raise UserError(f'unknown flag --{key}' + (f'; did you mean --{close[0]}?' if close else '')
                            + f' (python {_script()} --help lists them all)')
        if not has_value:
            if type(defaults[key]) is not bool:
                raise UserError(f'--{key} needs a value: --{key}=VALUE')
            value = 'true'
        pairs.append((key, value))
    out = dict(defaults)
    for key, value in sorted(pairs, key=lambda kv: kv[0] != 'size'):  # the preset first, then what it overrides
        if key == 'size' and presets is not None:
            if value not in presets:
                raise UserError(f'unknown size {value!r}; choose one of: {", ".join(presets)}')
            out.update({k: v for k, v in presets[value].items() if k in defaults})
        out[key] = _convert(key, value, defaults[key])
    for key, lowest in (minimum or {}).items():  # one check for every script's impossible values
        if lowest == '>0' and out[key] <= 0:
            raise UserError(f'--{key} must be positive')
        if lowest != '>0' and out[key] < lowest:
            raise UserError(f'--{key} cannot be negative' if lowest == 0 else f'--{key} must be at least {lowest}')
    return out


def given_flags(argv):
    """The names of the flags typed in argv. A preset counts as the one flag --size: the values it applies are its
    defaults, not the user's word, so that `--size=tiny --init_from=resume` resumes a run that set its own steps."""
    return {arg[2:].partition('=')[0] for arg in argv if arg.startswith('--')}


def _convert(key, value, default):
    kind = type(default)
    try:
        if kind is bool:
            if value.lower() not in ('true', 'false', '1', '0'):
                raise ValueError
            return value.lower() in ('true', '1')
        return kind(value)
    except ValueError:
        example = 'true or false' if kind is bool else kind.__name__
        raise UserError(f'--{key}={value} is not a valid {example} (default: {default!r})')


def _script():
    return os.path.basename(sys.argv[0]) or 'SCRIPT'


def comments(sources):
    """flag -> its one-line comment, read from lines like `name=value,  # comment` or `name: type = value  # comment`
    in the modules named (files beside this one)."""
    found = {}
    for name in sources:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name + '.py')) as f:
            for line in f:
                m = re.match(r"\s*(?:\*\*)?'?(\w+)'?\s*(?::\s*\w+\s*)?[=:].*?#\s*(.+)$", line)
                if m:
                    found.setdefault(m.group(1), m.group(2).strip())
    return found


def help_text(defaults, doc, sources, presets=None):
    """Usage lines (the indented commands in doc), then every flag with its default and its comment."""
    usage = [line.strip() for line in doc.splitlines() if re.match(r'    \S', line) and
             line.split()[0] in ('python', 'torchrun')]
    explain = comments(sources)
    rows = [(f'--{k}={str(v).lower() if type(v) is bool else v}', explain.get(k, '')) for k, v in defaults.items()]
    width = min(40, max(len(flag) for flag, _ in rows))
    lines = ['usage:'] + [f'  {u}' for u in usage] + ['', 'flags (--key=value; a bare --key sets a true/false flag to true):']
    lines += [f'  {flag:<{width}}  {text}'.rstrip() if len(flag) <= width else f'  {flag}\n  {"":<{width}}  {text}'
              for flag, text in rows]
    if presets:
        lines.append(f'\n--size=NAME applies a preset first ({", ".join(presets)}); explicit flags win over it.')
    return '\n'.join(lines)


def write_failed(e, path, kept, partial=()):
    """The UserError for OSError e, raised while writing path, once the partial files it left are removed: a full
    disk (or a spent quota) is said as such, anything else (no permission, a read-only disk) in the system's words,
    and either way what was kept, so the user knows that a rerun starts from there."""
    for p in partial:
        with contextlib.suppress(OSError):
            os.remove(p)
    if disk_full(e):
        return UserError(f'the disk is full writing {path} (kept: {kept}); free some space and run again')
    return UserError(f'cannot write {path}: {e.strerror or e} (kept: {kept})')


def inside(root, relative, what):
    """root/relative, for a path read from data (a COCO annotation's file name): a UserError if it
    would point outside root (an absolute path, a '..' that climbs out, a link that leads out), so data never
    decides where a file is written."""
    relative = str(relative)
    path = os.path.normpath(os.path.join(root, relative))
    base = os.path.realpath(root)
    if os.path.isabs(relative) or '\0' in relative or \
            os.path.commonpath([base, os.path.realpath(path)]) != base:
        raise UserError(f'{what} {relative!r} points outside {root}; refused')
    return path


MAX_DEPTH = 64  # JSON nested deeper than this (a record, a reply) is refused: Python's parser would overflow its stack


def loads(text):
    """json.loads for text from outside (a file, a server, a model's reply): ValueError, never RecursionError, for
    JSON nested more than MAX_DEPTH deep."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError(f'it is JSON nested too deeply (more than {MAX_DEPTH} levels)') from None
    if too_deep(obj):
        raise ValueError(f'it is JSON nested too deeply (more than {MAX_DEPTH} levels)')
    return obj


def too_deep(obj):
    """Whether obj (parsed JSON) nests lists and objects more than MAX_DEPTH deep; without recursion."""
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                return True
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


def temporary(path, suffix='.tmp'):
    """A name beside path for a file written before it takes path's name; this process's own, so that two runs
    writing the same file at once (two trainings preparing one dataset) never write into each other's."""
    return f'{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}'


def write_file(path, write, kept=None):
    """Write path atomically: write(f) fills a text file beside it, which is on disk before it takes path's name, so a
    crash or a full disk never leaves half a file where a whole one was, and a failed write leaves the file there as
    it was. A file its owner made read-only is refused, not replaced. kept: what to say was kept if the write fails
    (by default, the file as it was)."""
    was = f'{path} as it was' if os.path.exists(path) else 'no half-written file'
    if os.path.isfile(path) and not os.stat(path).st_mode & 0o222:
        raise UserError(f'{path} is read-only, so it was not replaced (kept: {kept or was}); make it writable or give '
                        'another file')
    tmp = temporary(path)
    try:
        with open(tmp, 'w') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name: a full disk says so here, not after the rename
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(e, path, kept or was, [tmp]) from None


def hold(lock_path, place, what, instead):
    """Hold lock_path for this run, so that a second run into the same place (a training's out_dir, a build's folder,
    a grade cache, sample.py's --out) is refused in one line rather than mixing its files with this one's, or paying
    again for what this one is paying for. place: what is held, as said to the user; what: 'another training run';
    instead: what the user can do. The lock is the operating system's (flock), which it drops when the process ends
    however it ends, kill -9 included: a killed run never leaves the place locked. Keep the returned file open for
    as long as the run goes on (let_go ends it and removes the file)."""
    f = open(lock_path, 'a+')
    try:
        if os.name == 'nt':
            import msvcrt
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(lock_path).st_ino != os.fstat(f.fileno()).st_ino:  # the run before let go of it as we opened it
            raise OSError
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise UserError(f'{place} is in use by {what}{f" (process {holder})" if holder else ""}; '
                        f'wait for it to finish, or {instead}')
    with contextlib.suppress(OSError):  # who holds it, for the message above; a full disk leaves it unsaid
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
    return f


def let_go(lock):
    """End a lock taken by hold, removing its file (a later run makes a fresh one)."""
    with contextlib.suppress(OSError):
        os.remove(lock.name)
    with contextlib.suppress(OSError):  # the process id it could not write on a full disk is not written now either
        lock.close()


def file_hash(path, algorithm='sha256'):
    """The hex digest of a file's bytes, read a MiB at a time (a checkpoint, a downloaded archive)."""
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def disk_full(e):
    """Whether OSError e says the disk (or the user's quota) is full."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def pick_device(name):
    """The --device flag: 'auto' is the best device here (cuda, then mps, then cpu), else the one named."""
    import torch  # here: only --device needs torch, and cli.py is the bottom layer, which imports nothing heavy
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f'unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps')
    if device.type == 'cuda' and not torch.cuda.is_available() or device.type == 'mps' and not torch.backends.mps.is_available():
        raise UserError(f'device {name} is not available on this machine; use --device=cpu or --device=auto')
    return device


def run_cli(main):
    """Run main(argv): --help prints and exits 0; a UserError is one line on stderr and exit status 1."""
    try:
        main(sys.argv[1:])
    except ShowHelp as h:
        print(h)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)


def worker_pool():
    """A pool of processes for work that splits into tasks, one for each CPU but this process's. They leave Ctrl-C
    to this process, which run_cli answers in one line (each worker would print a traceback)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return multiprocessing.Pool(max(1, cpus - 1), signal.signal, (signal.SIGINT, signal.SIG_IGN))
