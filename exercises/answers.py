"""
The teacher's answers to EXERCISES.md, measured: every exercise's commands are read from EXERCISES.md itself and run
as written, in order, from the repository root (the same python), each exercise timed; what they print is read
back into the teacher's section, with the machine (cores, torch, the peak FLOP/s a matmul reaches, measured before
each exercise, so that a busy machine shows beside its times) and the commit it was measured at.

    python exercises/answers.py                   # every exercise (the length of the course), printed and saved
    python exercises/answers.py --only=3,12       # a subset; 0 is the reference run before the course
    python exercises/answers.py --write           # and replace EXERCISES.md's teacher section with it

The Look and Break commands run in the repository root. A Build check (12-16) runs on our code, and again in a
scratch copy of the tracked files after `python exercises/student.py N` (the student's copy: it must fail there).
A Build exercise with a solution (exercises/solutions/NN-*.patch, 17-19) runs in a scratch copy with the patch
applied, as does any exercise whose commands edit the code (git apply); data/ and the out* folders are linked into
the copy so that it reads the models already made.

A sentence depends on the checkpoint: every command that describes one picture (--image, --scene) with the
reference model runs again on --seeds reference checkpoints (out-tiny, and exercise 0's command with --seed=S
--out_dir=out-tiny-seedS), a scene in a colour its kind never has (the blue tree) in every such colour.

A training run is never repeated into a folder that holds its model (train.py refuses to): the model is reused, and
its answer comes from the output recorded when it was made (out-answers/results.json), else from its train_log.jsonl.
So --only=3 reads the out-tiny already made. For answers from scratch, run it in a fresh clone (sample.py also
refuses to add to a greedy.jsonl made by another checkpoint). Every command's output is kept in --out/logs, every
exercise's record in --out/results.json: the section is written from them, with the commit each was measured at.
"""
import glob
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import data  # noqa: E402
import machine  # noqa: E402
import picturebook  # noqa: E402
import pictures  # noqa: E402
import train  # noqa: E402
from cli import UserError, parse_flags, run_cli, write_file  # noqa: E402

DEFAULTS = dict(
    only='',                # exercises to run, e.g. 3,12 (0: the reference run); empty: all, in order
    seeds=3,                # reference checkpoints a quoted sentence is measured on: out-tiny and seeds-1 more
    out='out-answers',      # the run folder: every command's output, results.json and the section (answers.md)
    write=False,            # replace EXERCISES.md's teacher section (from its heading to the end) with this one
    student=True,           # 12-16: also run each check on the student's copy, where it must fail
)
EXERCISES = os.path.join(ROOT, 'EXERCISES.md')
TEACHER = '## For the teacher: measured answers'
HOW_TO_GRADE = 'How to grade:'  # the closing paragraph, kept as it is
FORMAT = 2  # of the records in results.json: those of another version of this script are not read
PLACEHOLDER = re.compile(r'(?<![\w.])[A-Z]{2,}(?![\w.])')  # OUT in a generic command: no exercise runs it


# -----------------------------------------------------------------------------
# The course as EXERCISES.md writes it

def exercises(path=EXERCISES):
    """[{number, title, kind, commands: [argv], text}] in the order of the file: 0 is the reference run of "Before
    you start", then each '### N.' heading with the commands under it (4-space indented lines and ``` blocks that
    start with python or git); a `## ` heading ends an exercise (its introduction belongs to none), the teacher's
    section ends the course. A command with a placeholder (OUT) shows a form, not a run, and is left out."""
    found = [dict(number=0, title='the reference run', kind='Before', commands=[], text='')]
    current, kind, fenced = found[0], None, False
    with open(path) as f:
        for line in f:
            if line.startswith(TEACHER):
                break
            if line.startswith('```'):
                fenced = not fenced
                continue
            heading = re.match(r'### (\d+)\. (.*)', line)
            if heading:
                current = dict(number=int(heading.group(1)), title=heading.group(2).strip(), kind=kind,
                               commands=[], text='')
                found.append(current)
                continue
            if line.startswith('## '):
                kind, current = line[3:].split()[0], None
                continue
            if current is None:
                continue
            current['text'] += line
            code = line.strip() if fenced else line[4:] if line.startswith('    ') and line[4] != ' ' else ''
            if re.match(r'(python|git) ', code) and not PLACEHOLDER.search(code):
                current['commands'].append(shlex.split(code, comments=True))
    return found


def flag(argv, name, default=None):
    """The value of --name=value in argv (the last one wins, as in cli.parse_flags)."""
    values = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
    return values[-1] if values else default


def train_out_dir(argv):
    """Where a train.py command saves: its --out_dir, else its preset's (a flag of a solution not applied here,
    such as 19's --connector, must not matter)."""
    return flag(argv, 'out_dir') or train.PRESETS[flag(argv, 'size', train.DEFAULTS['size'])]['out_dir']


def is_train(argv):
    return argv[1:2] == ['train.py']


def is_check(argv):  # a Build exercise's check
    return argv[1:3] == ['-m', 'pytest']


def describes_one(argv):
    """A sample.py command that describes one picture with the reference model (no --out_dir of its own)."""
    return argv[1:2] == ['sample.py'] and (flag(argv, 'image') or flag(argv, 'scene')) and not flag(argv, 'out_dir')


# -----------------------------------------------------------------------------
# Running commands

def run(argv, cwd, log):
    """Run one command (python: this python), its output (stdout and stderr, as a terminal shows it) kept in log."""
    exe = [sys.executable] if argv[0] == 'python' else [argv[0]]
    t = time.time()
    env = {**os.environ, 'GIT_CEILING_DIRECTORIES': os.path.dirname(cwd)}  # git apply in a scratch copy stays there
    p = subprocess.run(exe + argv[1:], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = '\n'.join(line.rsplit('\r', 1)[-1] for line in p.stdout.splitlines())  # progress lines: the last
    with open(log, 'a') as f:
        f.write(f'$ {shlex.join(argv)}   (in {cwd})\n{output}\n[exit {p.returncode}, {time.time() - t:.1f} s]\n\n')
    return dict(command=shlex.join(argv), where='root' if cwd == ROOT else 'copy', seconds=round(time.time() - t, 1),
                rc=p.returncode, output=output)


def scratch_copy(parent):
    """A copy of the tracked files (what a fresh clone has), with data/'s folders and the out* folders linked in."""
    dest = tempfile.mkdtemp(prefix='copy-', dir=parent)
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split('\0')):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))
    os.makedirs(os.path.join(dest, 'data'), exist_ok=True)
    for path in glob.glob(os.path.join(ROOT, 'data', '*')) + glob.glob(os.path.join(ROOT, 'out*')):
        link = os.path.join(dest, os.path.relpath(path, ROOT))
        if not os.path.exists(link) and os.path.abspath(path) != os.path.abspath(parent):
            os.symlink(os.path.abspath(path), link)
    return dest


def reference_runs(c):
    """The reference run's folder, then one per extra seed: [(its command with the seed, out_dir)]."""
    out = train_out_dir(c.reference)
    return [(None, out)] + [(c.reference + [f'--seed={s}', f'--out_dir={out}-seed{s}'], f'{out}-seed{s}')
                            for s in range(1, c.seeds)]


def unseen_colours(argv):
    """For a --scene with an object in a colour its kind never has in the world: every such colour (else [])."""
    scene = json.loads(flag(argv, 'scene') or '{}')
    for o in scene.get('objects', []):
        allowed = picturebook.KIND_COLORS.get(o.get('kind'))
        if allowed and o.get('color') not in allowed:
            return [o['color']] + [c for c in picturebook.COLORS if c not in allowed and c != o['color']]
    return []


def variant(argv, old=None, new=None):
    """argv without the pictures it draws (--sheet, --attention: the exercise's own stay as its command made them),
    the colour old of its --scene made new."""
    return [a.replace(f'"{old}"', f'"{new}"') if old else a for a in argv
            if not a.startswith(('--sheet=', '--attention='))]


def run_exercise(ex, c, logs, earlier):
    """Every command of one exercise, where it belongs; returns its record for results.json."""
    log = os.path.join(logs, f"{ex['number']:02d}.log")
    open(log, 'w').close()
    peak, _ = machine.peak_flops(torch.device('cpu'), 'float32')
    record = dict(number=ex['number'], title=ex['title'], kind=ex['kind'], peak=peak, commit=commit(), runs=[],
                  student=[], seeds=[], trained=[])
    t = time.time()
    patches = glob.glob(os.path.join(ROOT, 'exercises', 'solutions', f"{ex['number']:02d}-*.patch"))
    edits = any(argv[0] == 'git' for argv in ex['commands'])  # an edit (git apply) is made in a copy, never here
    cwd = scratch_copy(c.out) if patches or edits else ROOT
    todo = [['git', 'apply', os.path.relpath(patches[0], ROOT)]] if patches and not edits else []
    try:
        for argv in todo + ex['commands']:
            out_dir = is_train(argv) and train_out_dir(argv)
            if out_dir and os.path.exists(os.path.join(cwd, out_dir, 'ckpt.pt')):  # train.py would refuse: reuse
                before = earlier.get(shlex.join(argv))
                record['runs'].append(dict(before, reused=out_dir) if before else dict(
                    command=shlex.join(argv), where='root', seconds=None, rc=0, output='', reused=out_dir))
                continue
            record['runs'].append(run(argv, cwd, log))
    finally:
        if cwd != ROOT:
            shutil.rmtree(cwd)
    if ex['kind'] == 'Build' and not patches and c.student:
        record['student'] = student_copy(ex, c, log)
    if any(describes_one(argv) and (c.seeds > 1 or unseen_colours(argv)) for argv in ex['commands']):
        record['seeds'] = seed_spread(ex, c, log, record)
    timed = [r['seconds'] for r in record['runs'] if r['seconds'] is not None]  # a model reused: not timed here
    record['seconds'] = round(sum(timed), 1) if timed or not ex['commands'] else None  # as a student runs them
    record['extra_seconds'] = round(time.time() - t - sum(timed), 1)  # copies, the student's copy, the seeds
    return record


def student_copy(ex, c, log):
    """The check, in a scratch copy after `python exercises/student.py N`: what a student sees before writing."""
    cwd = scratch_copy(c.out)
    try:
        return [run(argv, cwd, log) for argv in [['python', 'exercises/student.py', str(ex['number'])]]
                + [a for a in ex['commands'] if is_check(a)]]
    finally:
        shutil.rmtree(cwd)


def seed_spread(ex, c, log, record):
    """Each one-picture command on every reference checkpoint (and in every colour its kind never has), the
    checkpoint trained first where missing (its run in record['trained']); [{seed, colour, command, output}]."""
    found = []
    for reference, out_dir in reference_runs(c):
        if reference and not os.path.exists(os.path.join(ROOT, out_dir, 'ckpt.pt')):
            record['trained'].append(run(reference, ROOT, log))
        for argv in filter(describes_one, ex['commands']):
            colours = unseen_colours(argv)
            for colour in colours or [None]:
                command = variant(argv, colours[0], colour) if colour else variant(argv)
                r = run(command + [f'--out_dir={out_dir}'], ROOT, log)
                found.append(dict(out_dir=out_dir, colour=colour, **r))
    return found


# -----------------------------------------------------------------------------
# Reading the answers out of what the commands printed

def eval_lines(output):
    """The evaluations train.py printed (`step N: train/short 1.234, ...`), each as {'step': N, name: value}."""
    return [{'step': int(step), **{k: float(v) for k, v in re.findall(r'(\S+) (-?[\d.]+)(?:,|$)', rest)}}
            for step, rest in re.findall(r'^step (\d+): (\w+/\w+ .*)$', output, re.M)]


def log_eval(out_dir):
    """The last evaluation in out_dir/train_log.jsonl, for a run made before (its output not recorded)."""
    path = os.path.join(ROOT, out_dir, 'train_log.jsonl')
    evals = [e for e in data.read_log(path) if 'eval' in e]  # a missing log: none
    return {'step': evals[-1]['step'], **evals[-1]['eval']} if evals else {}


def sheets(output):
    """[(step, true, stated)] of the sample sheets train.py drew."""
    return [(int(s), int(t), int(n)) for s, t, n in
            re.findall(r'step-0*(\d+)\.png: (\d+) of the (\d+) facts stated are true', output)]


def train_summary(output):
    """(training seconds without evaluation, median ms per step) from train.py's last line and progress lines."""
    done = re.search(r'done: \d+ steps in \d+s \(([\d.]+)s training', output)
    ms = [float(m) for m in re.findall(r'\| (\d+) ms/step \|', output)]
    return (float(done.group(1)) if done else None), (statistics.median(ms) if ms else None)


def grade_table(output):
    """grade.py's table as {file: {column: text}}: columns are two or more spaces apart."""
    lines = [line for line in output.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith('samples ')), None)
    if start is None:
        return {}
    header = re.split(r'\s{2,}', lines[start].strip())
    rows = [re.split(r'\s{2,}', line.strip()) for line in lines[start + 1:]]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in rows if len(row) == len(header)}


def pytest_counts(output):
    """pytest's last line, e.g. '5 passed, 41 deselected in 3.1s' -> '5 passed' (what ran, and how it went)."""
    last = next((line for line in reversed(output.splitlines()) if re.search(r'\d+ (passed|failed|error)', line)), '')
    return ', '.join(f'{n} {k}' for n, k in re.findall(r'(\d+) (passed|failed|errors?)', last)) or 'no tests ran'


def described(output):
    """(sentence, grounding line or '') that sample.py printed for one picture."""
    lines = [line for line in output.splitlines() if line.strip()]
    ground = next((line for line in lines if line.startswith('grounding: ')), '')
    text = next((line for line in lines if not line.startswith(('grounding: ', 'error', 'wrote '))), '')
    return text, ground[len('grounding: '):]


# -----------------------------------------------------------------------------
# The teacher's section

def seconds(s):
    return f'{s:,.0f} s' if s >= 10 else f'{s:.1f} s'


def time_cell(record):
    """The exercise's time, its long commands' times, the peak measured before it, and the models it reused."""
    long = [seconds(r['seconds']) for r in record['runs'] if (r.get('seconds') or 0) >= 10]
    reused = [r['reused'] for r in record['runs'] if r.get('reused')]
    if record['seconds'] is None:
        return f"not timed here (reused {', '.join(reused)}, made before)"
    return (seconds(record['seconds']) + (f" ({' + '.join(long)})" if len(long) > 1 else '')
            + f" at {record['peak'] / 1e9:.0f} GFLOP/s" + (f"; reused {', '.join(reused)}" if reused else ''))


def run_answer(r, detail=False):
    """The answer one command gives, in a phrase (empty where it prints nothing to grade). A training run gives its
    last evaluation; with detail (the reference run), or where the command asks for evaluations (--eval_interval:
    exercise 1 watches them), every evaluation's validation loss and grounding, and the sample sheets' facts."""
    argv, out = shlex.split(r['command']), r['output']
    if r.get('rc'):
        return f"`{r['command']}` FAILED: {(out.strip().splitlines() or ['no output'])[-1]}"
    if is_train(argv):
        evals = eval_lines(out)
        e = evals[-1] if evals else log_eval(train_out_dir(argv))
        train_s, ms = train_summary(out)
        parts = [f"`{train_out_dir(argv)}` step {e.get('step')}: " + ', '.join(
            f'{k} {v:.3f}' for k, v in e.items() if k.startswith(('val/', 'ground/')))] if e else []
        detail = detail or flag(argv, 'eval_interval')
        if train_s is not None:
            parts.append(f'{train_s:.0f} s training, {ms:.0f} ms a step' if ms else f'{train_s:.0f} s training')
        for name in ('val/short', 'ground/precision'):  # a run that evaluates often: how it got there
            if detail and len(evals) > 2 and all(name in x for x in evals):
                parts.append(f'{name} at each evaluation: ' + ', '.join(f'{x[name]:.2f}' for x in evals))
        sheet = sheets(out)
        if detail and len(sheet) > 1:
            parts.append('facts true on the sheets: ' + ', '.join(f'{t}/{n} at {s}' for s, t, n in sheet))
        return '; '.join(parts)
    if argv[1:2] == ['grade.py']:
        return '; '.join(f'`{path}`: ' + ', '.join(f'{k} {v}' for k, v in row.items() if k != 'n')
                         for path, row in grade_table(out).items())
    if is_check(argv):
        return f"{pytest_counts(out)} (`{' '.join(argv[3:])}`)"
    if describes_one(argv) or argv[1:2] == ['sample.py'] and (flag(argv, 'image') or flag(argv, 'scene')):
        text, ground = described(out)
        return f'"{text}"' + (f' ({ground})' if ground else '')
    return ''


def spread(record):
    """The seeds' sentences: per colour (or per command), how many checkpoints say what."""
    lines, groups = [], {}
    for s in record['seeds']:
        groups.setdefault((s['colour'], s['command'].split(' --out_dir=')[0]), []).append(s)
    for (colour, command), runs in groups.items():
        said = [described(r['output']) if not r['rc'] else (f"FAILED: {r['output'].strip()[-200:]}", '')
                for r in runs]
        firsts = [re.match(r'[^.!?]*[.!?]?', t).group(0) for t, _ in said]  # what it says first is about the object
        quoted = ' / '.join(f'"{t}"' + (f' (x{firsts.count(t)})' if firsts.count(t) > 1 else '')
                            for t in dict.fromkeys(firsts))
        if colour:  # the judge's `names 1 of the 1 objects`: its colour and kind; "tree" alone: its kind
            named = sum('it names 1 of the 1 objects' in g for _, g in said)
            kind = sum(re.search(r'\btrees?\b', t, re.I) is not None for t, _ in said)
            lines.append(f'{colour}: {named} of {len(runs)} name the {colour} tree, {kind} say "tree" at all: '
                         + quoted)
        else:
            lines.append(f'`{command}`: {quoted}')
    return lines


def log_answer(ex):
    """An exercise with no command reads a run's log as loss.png draws it (pictures.loss_series): where each style's
    loss is above the other's."""
    paths = re.findall(r'`(\S+/train_log\.jsonl)`', ex['text'])
    path = os.path.join(ROOT, paths[0]) if paths else ''
    if not os.path.exists(path):
        return f"no {paths[0] if paths else 'train_log.jsonl'} to read (run 0 first)"
    series = pictures.loss_series(path)
    parts = []
    for split in ('val', 'train'):
        short, long = dict(series.get(f'{split}/short', [])), dict(series.get(f'{split}/long', []))
        steps = sorted(set(short) & set(long))
        above = [s for s in steps if long[s] >= short[s]]
        if not steps:
            continue
        parts.append(f'{split}/long is above {split}/short at {len(above)} of the {len(steps)} points loss.png draws'
                     + (f' (steps {steps[0]} to {steps[-1]})' if split == 'train' else
                        f" (steps {', '.join(map(str, steps))})")
                     + (f', the last at step {above[-1]}' if above else '')
                     + f'; last {split}/short {short[steps[-1]]:.3f}, {split}/long {long[steps[-1]]:.3f}')
    return '; '.join(parts) or f'{paths[0]} has no losses of both styles'


def answer(record, ex):
    parts = [a for a in (run_answer(r, record['number'] == 0) for r in record['runs']) if a]
    if record['student']:
        parts.append(f"student's copy (`python exercises/student.py {record['number']}`): "
                     + pytest_counts(record['student'][-1]['output']))
    if record['seeds']:
        dirs = list(dict.fromkeys(s['out_dir'] for s in record['seeds']))
        parts.append(f"a sentence depends on the checkpoint; on {len(dirs)} reference checkpoints ({', '.join(dirs)}: "
                     'the reference run with `--seed=S --out_dir=...-seedS`): ' + '; '.join(spread(record)))
    if not ex['commands']:
        parts.append(log_answer(ex))
    return '. '.join(p.replace('|', '\\|') for p in parts) or 'nothing measured'


def commit():
    """The commit the code is at, and whether tracked files differ from it."""
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return (head.stdout.strip() or 'unknown') + (' with uncommitted changes' if dirty else '')


def machine_line(peak, commits):
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return (f"Measured by `python exercises/answers.py` at commit {', '.join(commits)}"
            + ' (exercises measured at different commits: rerun them all for one)' * (len(commits) > 1)
            + f' on {os.cpu_count()} CPU cores ({platform.machine()}), '
            f'{gpu}, `torch=={torch.__version__}`; a 1024x1024 float32 matmul reached {peak / 1e9:.0f} GFLOP/s at the '
            'start (machine.peak_flops; beside each time, what it reached just before that exercise: lower is a busier '
            'machine). Commands exactly as written above; grounding on the first 200 test scenes, greedy, `python '
            'grade.py`; the brackets are 95% bootstrap intervals.')


def section(records, course, peak, closing):
    """The teacher's section in markdown, from the records of the runs."""
    by_number = {r['number']: r for r in records}
    commits = list(dict.fromkeys(r.get('commit', 'unknown') for r in sorted(records, key=lambda r: r['number'])))
    lines = [TEACHER, '', machine_line(peak, commits or [commit()]), '']
    if 0 in by_number:
        lines += [f"**The reference run** (`python train.py --size=tiny`; {time_cell(by_number[0])}): "
                  f"{answer(by_number[0], course[0])}.", '']
    trained = [r for record in records for r in record.get('trained', [])]
    if trained:  # the same preset from other seeds: how far the answers of one checkpoint can move
        lines += ['**The same run from other seeds** (for the spread of the quoted sentences): ' + '. '.join(
            f"`{r['command']}` ({seconds(r['seconds'])}): {run_answer(r)}" for r in trained) + '.', '']
    lines += ['| # | kind | time here | the measured answer |', '| --- | --- | --- | --- |']
    for ex in course[1:]:
        r = by_number.get(ex['number'])
        if r is None and not ex['commands']:  # it reads what the reference run left (exercise 2): nothing to run
            r = dict(number=ex['number'], runs=[], student=[], seeds=[], seconds=0.0, peak=peak)
        cells = (time_cell(r), answer(r, ex)) if r else ('not run', 'not run')
        lines.append(f"| {ex['number']} | {ex['kind']} | {cells[0]} | {cells[1]} |")
    return '\n'.join(lines + ['', closing]).rstrip() + '\n'


def closing_paragraph(path=EXERCISES):
    """The 'How to grade' paragraph of today's section, kept as it is."""
    teacher = open(path).read().partition(TEACHER)[2]
    return teacher[teacher.find(HOW_TO_GRADE):] if HOW_TO_GRADE in teacher else ''


def replaced(whole, text):
    """EXERCISES.md's text with its teacher's section (from the heading to the end) replaced by text."""
    start = whole.find(TEACHER)
    if start < 0:
        raise UserError(f'EXERCISES.md has no "{TEACHER}" heading to replace; add it at the end')
    return whole[:start] + text


# -----------------------------------------------------------------------------

def main(argv):
    c = SimpleNamespace(**parse_flags(DEFAULTS, argv, minimum={'seeds': 1}, doc=__doc__,
                                      sources=['exercises/answers']))
    course = exercises()
    c.reference = next(iter(course[0]['commands']), ['python', 'train.py'])  # what the spread's seeds retrain
    try:
        only = {int(n) for n in c.only.split(',') if n.strip()}
    except ValueError:
        raise UserError(f'--only={c.only}: give exercise numbers, e.g. --only=3,12') from None
    unknown = only - {ex['number'] for ex in course}
    if unknown:
        raise UserError(f"--only: EXERCISES.md has no exercise {', '.join(map(str, sorted(unknown)))}")
    c.out = os.path.join(ROOT, c.out)
    logs = os.path.join(c.out, 'logs')
    os.makedirs(logs, exist_ok=True)
    results_path = os.path.join(c.out, 'results.json')
    saved = json.load(open(results_path)) if os.path.exists(results_path) else {}
    kept = saved.get('records', {}) if saved.get('format') == FORMAT else {}  # another version's: run again
    earlier = {r['command']: r for rec in kept.values() for r in rec['runs'] if r.get('seconds') is not None}
    peak, _ = machine.peak_flops(torch.device('cpu'), 'float32')
    todo = [ex for ex in course if not only or ex['number'] in only | {0}]  # 0 reuses out-tiny where it is made
    for ex in todo:
        print(f"exercise {ex['number']} ({ex['title']}): {len(ex['commands'])} commands ...", flush=True)
        record = run_exercise(ex, c, logs, earlier)
        kept[str(ex['number'])] = record
        write_file(results_path, lambda f: json.dump({'format': FORMAT, 'records': kept}, f, indent=1))  # each time
        print(f"  {time_cell(record)}: {answer(record, ex)}", flush=True)
    text = section(list(kept.values()), course, peak, closing_paragraph())
    write_file(os.path.join(c.out, 'answers.md'), lambda f: f.write(text))
    print('\n' + text + f"\n(saved as {os.path.relpath(os.path.join(c.out, 'answers.md'), ROOT)})")
    if c.write:
        whole = replaced(open(EXERCISES).read(), text)
        write_file(EXERCISES, lambda f: f.write(whole))
        print(f'EXERCISES.md: the teacher\'s section replaced ({len(kept)} exercises measured)')


if __name__ == '__main__':
    run_cli(main)
