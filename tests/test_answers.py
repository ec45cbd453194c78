"""
exercises/answers.py finds every exercise's commands in EXERCISES.md as it is today, and writes the teacher's
section (a row per exercise, with the numbers read back) from what the commands print. The outputs are real ones,
kept small in answers_outputs.json: a 30-step `train.py --max_iters=30 --eval_interval=10` (its truth/model lines
left out), its train_log.jsonl, and sample.py, grade.py, pytest and data.py as exercises 3, 5, 11, 12 and 17 print
them (on that 30-step model); each command of the course is given the output of its kind.
"""
import json
import os
import shlex
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'exercises'))
import answers  # noqa: E402

with open(os.path.join(os.path.dirname(__file__), 'answers_outputs.json')) as f:
    CANNED = json.load(f)


def kind(argv):
    """Which canned output a command gets."""
    if argv[0] == 'git':
        return 'git'
    if argv[1:3] == ['-m', 'pytest']:
        return 'pytest'
    if argv[1] == 'sample.py':
        return 'sample.py --scene' if answers.flag(argv, 'scene') else \
            'sample.py --image' if answers.flag(argv, 'image') else 'sample.py --jsonl'
    return argv[1]


def test_every_exercise_has_its_commands():
    course = answers.exercises()
    assert [ex['number'] for ex in course] == list(range(20))
    assert course[0]['commands'] == [['python', 'train.py', '--size=tiny']]  # "Before you start", not the OUT form
    assert [ex['kind'] for ex in course[1:]] == ['Look'] * 5 + ['Break'] * 6 + ['Build'] * 8
    for ex in course[1:]:  # 2 runs nothing: it reads the reference run's log
        assert ex['commands'] or '/train_log.jsonl`' in ex['text'], f"exercise {ex['number']}: no command found"
        assert all(a[0] in ('python', 'git') and 'OUT' not in a for a in ex['commands']), ex['commands']
    assert all(any(answers.is_check(a) for a in ex['commands']) for ex in course[12:])  # every Build has its check
    colours = [answers.unseen_colours(a) for a in course[5]['commands']]  # the blue tree, then every colour trees lack
    assert any(c[:1] == ['blue'] and set(c) == {'blue', 'red', 'brown', 'purple', 'black', 'white'} for c in colours)


def records(course):
    """A record per exercise as run_exercise makes it, each command given the canned output of its kind."""
    made = []
    for ex in course:
        runs = [dict(command=shlex.join(a), where='root', seconds=12.5, rc=0, output=CANNED[kind(a)])
                for a in ex['commands']]
        made.append(dict(number=ex['number'], title=ex['title'], kind=ex['kind'], peak=66e9, seconds=30.0, runs=runs,
                         commit='5adbec5',
                         student=[], seeds=[]))
    return made


def test_the_section_has_a_row_with_its_answer_for_every_exercise(tmp_path, monkeypatch):
    os.makedirs(tmp_path / 'out-tiny')
    (tmp_path / 'out-tiny' / 'train_log.jsonl').write_text(CANNED['train_log.jsonl'])
    monkeypatch.setattr(answers, 'ROOT', str(tmp_path))  # exercise 2 reads out-tiny/train_log.jsonl there
    course = answers.exercises()
    made = records(course)
    made[12]['student'] = [dict(command='python exercises/student.py 12', output=''),
                           dict(command='', output=CANNED['pytest, the student\'s copy'])]
    made[5]['seeds'] = [dict(out_dir=out_dir, colour=colour, command=f'python sample.py --scene=... {colour}', rc=0,
                             output=CANNED['sample.py --scene'])
                        for out_dir in ('out-tiny', 'out-tiny-seed1') for colour in ('blue', 'red')]
    made[3]['trained'] = [dict(command='python train.py --size=tiny --seed=1 --out_dir=out-tiny-seed1', rc=0,
                               seconds=259.0, output=CANNED['train.py'])]
    text = answers.section(made, course, 66e9, 'How to grade: by the checks.')
    rows = {int(line.split('|')[1]): line for line in text.splitlines() if line.startswith('| ') and '---' not in line
            and not line.startswith('| #')}
    assert sorted(rows) == list(range(1, 20))
    assert 'not run' not in text and 'FAILED' not in text
    before = text.split('| 1 |')[0]  # the reference run's last evaluation, and the other seeds' runs
    assert 'step 30: val/short 3.552' in before
    assert '--out_dir=out-tiny-seed1` (259 s): `out-tiny-seed1` step 30' in before
    assert 'facts true on the sheets: 1/2 at 0, 0/0 at 10' in rows[1]
    assert '`out-nonorm` step 30: val/short 3.552' in rows[6] and 'at each evaluation' not in rows[6]  # the last only
    assert 'val/long is above val/short at 3 of the 4 points loss.png draws (steps 0, 10, 20, 30)' in rows[2]
    assert 'precision 0.000 [' in rows[3] and 'words ' in rows[3]  # grade.py's table, a cell per column
    assert 'on 2 reference checkpoints (out-tiny, out-tiny-seed1' in rows[5]
    assert 'it names 0 of the 1 objects' in rows[5]
    assert 'blue: 0 of 2 name the blue tree, 0 say "tree" at all' in rows[5]
    assert '5 passed' in rows[12] and "student's copy (`python exercises/student.py 12`): 3 failed" in rows[12]
    assert '| 30 s (12 s + 12 s + 12 s + 12 s) at 66 GFLOP/s |' in rows[6]  # each long command, the peak
    assert 'at commit 5adbec5 on' in text and text.startswith(answers.TEACHER)
    assert text.rstrip().endswith('How to grade: by the checks.')  # the closing paragraph kept


def test_write_replaces_the_section_to_the_end_and_nothing_before():
    whole = f'# Exercises\n\n### 1. One\n\n    python train.py\n\n{answers.TEACHER}\n\nold table\n\nHow to grade: old\n'
    assert answers.replaced(whole, 'NEW\n') == '# Exercises\n\n### 1. One\n\n    python train.py\n\nNEW\n'
    with pytest.raises(answers.UserError):
        answers.replaced('# no section\n', 'NEW\n')
