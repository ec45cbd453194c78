"""EXERCISES.md never rots: every command it shows is run here as written, shrunken (a few steps, a tiny model, the
test's small picture-book set), in order, in one folder, and must finish without an error and leave what the text
says it leaves. The Build checks, and the commands that need a Build solution, are run by test_exercises_build.py."""
import os
import shutil
import sys

import data
import grade
import sample
import train
from conftest import ROOT, TINY

sys.path.insert(0, os.path.join(ROOT, 'exercises'))
import answers  # noqa: E402  (one reader of the course: the answers script's)

SCRIPTS = {'train.py': train.main, 'sample.py': sample.main, 'grade.py': grade.main, 'data.py': data.main}
SHRINK = {  # appended to each script's flags: later flags win, so the exercise's own flags stay as written
    'train.py': ['--max_iters=3', '--eval_interval=3', '--eval_iters=1', '--batch_size=4', '--log_interval=1',
                 '--n_samples=1', '--sheet=2', '--warmup_iters=1'],
    'sample.py': ['--n=3', '--max_new_tokens=12'],
    'data.py': ['--n_train=24', '--n_val=8', '--n_test=16', '--img_size=32'],
    'grade.py': [],
}


NEEDS_SOLUTION = {18: '18-new-kind.patch', 19: '19-cross-attention.patch'}  # run by test_exercises_build.py


def commands(numbers=None):
    """The python commands of EXERCISES.md, in order, as (exercise number, argv), as exercises/answers.py reads them
    (0: the reference run before the course). numbers: only those exercises."""
    return [(ex['number'], argv) for ex in answers.exercises() if numbers is None or ex['number'] in numbers
            for argv in ex['commands'] if argv[0] == 'python']


def shrunk(argv):
    script, flags = argv[1], argv[2:]
    if script == 'train.py':  # the tiny test model first, so that an exercise's own model flags win over it
        flags = [f'--{k}={v}' for k, v in TINY.items()] + flags
    return script, flags + SHRINK[script]


def test_every_command_is_one_the_suite_can_run():
    found = commands()
    assert len(found) >= 25 and {n for n, _ in found} >= set(range(1, 20)) - {2}  # 2 reads a picture only
    for _, argv in found:
        assert argv[0] == 'python' and (argv[1] in SCRIPTS or argv[1:3] == ['-m', 'pytest']
                                        or argv[1] == 'exercises/student.py'), argv  # test_exercises_build.py runs it


def test_exercises_run_as_written(picturebook_dir, tmp_path, monkeypatch, capsys):
    os.makedirs(tmp_path / 'data')
    shutil.copytree(picturebook_dir, tmp_path / 'data' / 'picturebook')  # what `train.py --size=tiny` would draw
    monkeypatch.chdir(tmp_path)
    for number, argv in commands():
        if argv[1] not in SCRIPTS or number in NEEDS_SOLUTION:
            continue  # the Build checks, and what needs a Build solution: test_exercises_build.py runs them
        script, flags = shrunk(argv)
        SCRIPTS[script](flags)
        out = capsys.readouterr().out
        assert 'error' not in out.lower() or script == 'grade.py', (argv, out)
    for made in ('out-tiny/ckpt.pt', 'out-tiny/loss.png', 'out-watch/samples/step-000003.png', 'attention.png',
                 'blue-tree.png', 'out-nonorm/greedy.jsonl', 'out-1200/greedy.jsonl'):
        assert os.path.getsize(made) > 0, made
