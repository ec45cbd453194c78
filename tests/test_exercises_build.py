"""
The course's Build exercises (12-19 in EXERCISES.md) stay true as the code changes.

12-16 ask a student to write again a piece that exists (top-k, the KV cache, the patch embedding, the BatchNorm,
the FLOP count): the solution is the code as it stands, and each check is a -k selection of tests/test_model.py,
which must select tests and pass; `python exercises/student.py N` takes the piece out of model.py (the student's copy),
and then the same check must fail. 17-19 add something new: each check (exercises/check_*.py) must fail on the code
as it stands and pass once the teacher's solution (exercises/solutions/NN-*.patch) is applied, in a copy.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from test_exercises import NEEDS_SOLUTION, SCRIPTS, commands, shrunk

SELECTIONS = {12: 'top_k', 13: 'cache', 14: 'patch_embed', 15: 'batchnorm', 16: 'flops'}  # -k of each check

# Run in a fresh process: each selection as `python -m pytest -q tests/test_model.py -k EXPR` runs it, one after
# another (torch is imported once), counting what passed and what failed.
RUN_SELECTIONS = r'''
import json, sys
import pytest

class Count:
    def __init__(self):
        self.passed, self.failed = [], []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)
        elif report.when == 'call' and report.passed:
            self.passed.append(report.nodeid)

out = {}
for number, expr in json.loads(sys.argv[1]).items():
    count = Count()
    code = pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_model.py', '-k', expr], plugins=[count])
    out[number] = {'code': int(code), 'passed': count.passed, 'failed': count.failed}
print('RESULTS ' + json.dumps(out))
'''


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True,
                          timeout=600)


def test_checks_of_12_to_16_select_tests_that_pass():
    p = run(['-c', RUN_SELECTIONS, json.dumps(SELECTIONS)], ROOT)
    lines = [line for line in p.stdout.splitlines() if line.startswith('RESULTS ')]
    assert p.returncode == 0 and lines, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads(lines[-1][len('RESULTS '):])
    for number, expr in SELECTIONS.items():
        r = results[str(number)]
        assert r['passed'] and not r['failed'] and r['code'] == 0, f'exercise {number}, -k {expr}: {r}'


def test_the_students_copy_of_12_to_16_fails_its_check(tmp_path):
    """For each of 12-16, in a copy of the code: the student's copy (exercises/student.py N), then the exercise's
    check, fails on the piece taken out (the teacher's code passes the same check: the test above)."""
    procs = {}
    for number, expr in SELECTIONS.items():
        copy = tmp_path / str(number)
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('.git', 'data', 'out*', '__pycache__', '*.png'))
        p = run(['exercises/student.py', str(number)], copy)
        assert p.returncode == 0 and f'exercise {number}:' in p.stdout, p.stderr
        procs[number] = subprocess.Popen([sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider',
                                          'tests/test_model.py', '-k', expr], cwd=copy, env=dict(os.environ),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for number, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 1 and f'NotImplementedError: exercise {number} (EXERCISES.md)' in out, out[-3000:]


def copy_of_repository(dest):
    """What a check needs: the modules at the top, exercises/ (checks and solutions) and tests/test_model.py (whose
    helpers check_cross_attention.py shares)."""
    for path in glob.glob(os.path.join(ROOT, '*.py')):
        shutil.copy(path, dest)
    os.makedirs(os.path.join(dest, 'tests'))
    shutil.copy(os.path.join(ROOT, 'tests', 'test_model.py'), os.path.join(dest, 'tests'))
    shutil.copytree(os.path.join(ROOT, 'exercises'), os.path.join(dest, 'exercises'),
                    ignore=shutil.ignore_patterns('__pycache__', '.pytest_cache'))


def apply(patch, cwd):
    """git apply works outside a repository too (a temporary folder inside one would make it apply there: the
    ceiling keeps it out); patch(1) where git is missing."""
    if shutil.which('git'):
        env = {**os.environ, 'GIT_CEILING_DIRECTORIES': os.path.dirname(os.path.abspath(cwd))}
        p = subprocess.run(['git', 'apply', patch], cwd=cwd, env=env, capture_output=True, text=True)
    else:
        p = subprocess.run(['patch', '-p1', '-i', patch], cwd=cwd, capture_output=True, text=True)
    assert p.returncode == 0, f'{patch} does not apply to the code as it stands: {p.stdout}{p.stderr}'


@pytest.mark.parametrize('check, solution', [
    ('check_place_facts.py', '17-place-facts.patch'),
    ('check_new_kind.py', '18-new-kind.patch'),
    ('check_cross_attention.py', '19-cross-attention.patch'),
])
def test_check_fails_today_and_passes_with_the_solution(tmp_path, check, solution):
    copy_of_repository(tmp_path)
    check = os.path.join('exercises', check)
    before = run(['-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', check], tmp_path)
    assert before.returncode == 1, f'{check} should fail (a test, not the check itself) before the exercise:\n' + \
        before.stdout[-3000:]
    apply(os.path.join(tmp_path, 'exercises', 'solutions', solution), tmp_path)
    after = run(['-m', 'pytest', '-q', '-p', 'no:cacheprovider', check], tmp_path)
    assert after.returncode == 0, f'{check} should pass with {solution}:\n' + after.stdout[-3000:]
    for path in glob.glob(os.path.join(tmp_path, '*.py')):  # the solution keeps the project's rule for modules
        with open(path) as f:
            assert f.read().count('\n') <= 500, f'{os.path.basename(path)} is over 500 lines with {solution}'


# The commands of an exercise that needs its solution, run as written (shrunken) in the patched copy, after
# exercise 6's (its 800-step baseline is what they compare against).
RUN_COMMANDS = r'''
import json, sys
sys.path.insert(0, '.')
import data, grade, sample, train
scripts = {'train.py': train.main, 'sample.py': sample.main, 'grade.py': grade.main, 'data.py': data.main}
for script, flags in json.loads(sys.argv[1]):
    scripts[script](flags)
'''


@pytest.mark.parametrize('number', sorted(NEEDS_SOLUTION))
def test_commands_of_an_exercise_run_with_its_solution(picturebook_dir, tmp_path, number):
    copy_of_repository(tmp_path)
    apply(os.path.join(tmp_path, 'exercises', 'solutions', NEEDS_SOLUTION[number]), tmp_path)
    shutil.copytree(picturebook_dir, tmp_path / 'data' / 'picturebook')
    todo = [shrunk(argv) for _, argv in commands({0, 6, number}) if argv[1] in SCRIPTS]
    assert len(todo) > 5
    p = run(['-c', RUN_COMMANDS, json.dumps(todo)], tmp_path)
    assert p.returncode == 0 and 'Traceback' not in p.stderr, p.stdout[-3000:] + p.stderr[-3000:]
