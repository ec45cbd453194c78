"""
The student's copy of a Build exercise that writes again a piece of model.py (12-16 in EXERCISES.md): the piece is
taken out, leaving its signature, its docstring (or the line that opens it) and a NotImplementedError, so that the
exercise's check fails until the student has written it. The teacher's code stays in the repository.

    python exercises/student.py 12          # top-k sampling taken out of model.py; several numbers take out several
    git checkout model.py                   # the teacher's code back

Each piece is found by its place in the code (a class, a method, and an `if` whose body goes, or the whole body),
not by line numbers, so the command keeps working as the rest of model.py changes; a piece it cannot find, or one
already taken out, is said in one line.
"""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import UserError, run_cli  # noqa: E402

PIECES = {  # exercise -> what to write, and where: (class, method, the `if` whose body goes; None: the whole body)
    12: ('keep the top_k most likely tokens, renormalised', [('NanoVLM', 'generate', 'top_k')]),
    13: ('the KV cache: keep every key and value, then one new token at a time',
         [('SelfAttention', 'forward', 'cache is not None'), ('NanoVLM', 'generate', 'use_cache')]),
    14: ('the patch embedding: (B, 3, H, W) -> (B, N, C)', [('PatchEmbed', 'forward', None)]),
    15: ('the BatchNorm: standardise each feature over the global batch', [('BatchNorm', 'forward', None)]),
    16: ('the FLOPs of one picture, forward and backward', [('NanoVLM', 'flops_per_image', None)]),
}


def span(tree, cls, method, branch):
    """(first line, last line, indent) of the statements to take out, 1-based and inclusive."""
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    func = node and next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
    if func is None:
        raise UserError(f'model.py has no {cls}.{method}: this command and model.py disagree')
    if branch is None:
        body = func.body[1:] if ast.get_docstring(func) is not None else func.body
    else:
        found = next((n for n in ast.walk(func) if isinstance(n, ast.If) and ast.unparse(n.test) == branch), None)
        if found is None:
            raise UserError(f'{cls}.{method} in model.py has no `if {branch}:` this command could empty')
        body = found.body
    return body[0].lineno, body[-1].end_lineno, body[0].col_offset


def take_out(source, number):
    """model.py's source with exercise number's pieces replaced by NotImplementedError."""
    what, places = PIECES[number]
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for first, last, indent in sorted((span(tree, *place) for place in places), reverse=True):  # bottom up
        taken = ''.join(lines[first - 1:last])
        if 'NotImplementedError' in taken:
            raise UserError(f'exercise {number} is already taken out of model.py (git checkout model.py brings it back)')
        lines[first - 1:last] = [' ' * indent + f"raise NotImplementedError('exercise {number} (EXERCISES.md)')\n"]
    return ''.join(lines)


def main(argv):
    if not argv or any(a not in map(str, PIECES) for a in argv):
        raise UserError(f'give the exercises to take out of model.py: one or more of {", ".join(map(str, PIECES))}')
    path = os.path.join(ROOT, 'model.py')
    with open(path) as f:
        source = f.read()
    for number in sorted(set(map(int, argv))):
        source = take_out(source, number)
    with open(path, 'w') as f:
        f.write(source)
    for number in sorted(set(map(int, argv))):
        print(f'exercise {number}: {PIECES[number][0]} taken out of model.py; write it, then run its check '
              f'(EXERCISES.md); git checkout model.py brings ours back')


if __name__ == '__main__':
    run_cli(main)
