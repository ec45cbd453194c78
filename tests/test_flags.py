"""Flags (cli.parse_flags) and the scripts' one-line errors for mistakes a user can make."""
from dataclasses import asdict

import pytest

import cli
from cli import UserError, parse_flags
from model import SIZES, VLMConfig

DEFAULTS = dict(name='run', n=3, lr=0.5, flag=False)


def test_defaults_unchanged_without_flags():
    out = parse_flags(DEFAULTS, [])
    assert out == DEFAULTS and out is not DEFAULTS


def test_types_are_converted():
    out = parse_flags(DEFAULTS, ['--name=other=x', '--n=12', '--lr=1e-3', '--flag=True'])
    assert out == dict(name='other=x', n=12, lr=1e-3, flag=True)
    assert type(out['n']) is int and type(out['lr']) is float and type(out['flag']) is bool
    for value, expected in (('true', True), ('1', True), ('False', False), ('0', False)):
        assert parse_flags(DEFAULTS, [f'--flag={value}'])['flag'] is expected
    assert parse_flags(DEFAULTS, ['--lr=2'])['lr'] == 2.0 and type(parse_flags(DEFAULTS, ['--lr=2'])['lr']) is float
    assert parse_flags(DEFAULTS, ['--name='])['name'] == ''


def test_unknown_flag_names_it():
    with pytest.raises(UserError, match='--bogus'):
        parse_flags(DEFAULTS, ['--n=2', '--bogus=1'])


@pytest.mark.parametrize('arg', ['--n=abc', '--n=1.5', '--lr=fast', '--flag=yes'])
def test_mistyped_value(arg):
    with pytest.raises(UserError, match=arg.split('=')[0]):
        parse_flags(DEFAULTS, [arg])


@pytest.mark.parametrize('arg', ['n=3', '--n', 'extra'])
def test_malformed_argument(arg):
    with pytest.raises(UserError):
        parse_flags(DEFAULTS, [arg])


SIZE_DEFAULTS = {'size': 'tiny', **asdict(VLMConfig())}


def test_size_applies_preset():
    out = parse_flags(SIZE_DEFAULTS, ['--size=base'], SIZES)
    assert out['size'] == 'base'
    for key, value in SIZES['base'].items():
        assert out[key] == value


@pytest.mark.parametrize('argv', [['--size=base', '--n_layer=7'], ['--n_layer=7', '--size=base']])
def test_explicit_flag_wins_over_preset_in_any_order(argv):
    out = parse_flags(SIZE_DEFAULTS, argv, SIZES)
    assert out['n_layer'] == 7
    assert out['enc_layer'] == SIZES['base']['enc_layer'] and out['n_embd'] == SIZES['base']['n_embd']


def test_unknown_size():
    with pytest.raises(UserError, match='huge'):
        parse_flags(SIZE_DEFAULTS, ['--size=huge'], SIZES)


def test_pick_device():
    assert cli.pick_device('cpu').type == 'cpu'
    assert cli.pick_device('auto').type in ('cpu', 'cuda', 'mps')
    with pytest.raises(UserError):
        cli.pick_device('tpu-of-dreams')


def test_train_presets():
    import train
    for name in SIZES:
        out = parse_flags(train.DEFAULTS, [f'--size={name}'], train.PRESETS)
        assert out['out_dir'] == train.RUNS[name]['out_dir']
        assert all(out[k] == v for k, v in SIZES[name].items())
    out = parse_flags(train.DEFAULTS, ['--learning_rate=5e-4', '--size=mini'], train.PRESETS)
    assert out['learning_rate'] == 5e-4 and out['batch_size'] == train.RUNS['mini']['batch_size']


# -----------------------------------------------------------------------------
# The scripts end a user's mistake with one line on stderr, never a traceback.

def assert_one_line_error(p, *words):
    assert p.returncode != 0, p.stdout
    assert 'Traceback' not in p.stderr, p.stderr
    lines = p.stderr.rstrip('\n').split('\n')
    assert len(lines) == 1 and lines[0].strip(), p.stderr
    assert lines[0].startswith('error:'), p.stderr
    for word in words:
        assert word in lines[0], (word, p.stderr)


@pytest.mark.parametrize('args, words', [
    (['--size=huge'], ['huge']),
    (['--batch_size=x'], ['--batch_size=x']),
    (['--bogus=1'], ['--bogus']),
    (['--n_layer=abc'], ['--n_layer=abc']),
])
def test_train_flag_errors(run_main, args, words):
    assert_one_line_error(run_main('train.py', *args), *words)


def test_train_missing_dataset(run_main, tmp_path):
    p = run_main('train.py', f'--data_dir={tmp_path / "none"}', f'--out_dir={tmp_path / "out"}')
    assert_one_line_error(p, str(tmp_path / 'none'))


def test_train_resume_without_checkpoint(run_main, tmp_path):
    assert_one_line_error(run_main('train.py', f'--out_dir={tmp_path}', '--init_from=resume'), 'ckpt.pt')


def test_sample_without_checkpoint(run_main):
    assert_one_line_error(run_main('sample.py', '--out_dir=/nonexistent', '--image=x.png'), '/nonexistent')


def test_sample_missing_image(run_main, trained):
    assert_one_line_error(run_main('sample.py', f'--out_dir={trained.out_dir}', '--image=/missing.png'), '/missing.png')


def test_sample_corrupt_image(run_main, trained, tmp_path):
    bad = tmp_path / 'x.png'
    bad.write_bytes(b'\x89PNG but not really' * 20)
    assert_one_line_error(run_main('sample.py', f'--out_dir={trained.out_dir}', f'--image={bad}'), str(bad))


def test_model_cli_unknown_size(run_main):
    assert_one_line_error(run_main('model.py', '--size=huge'), 'huge')


def test_grade_cli_errors(run_main, tmp_path):
    assert_one_line_error(run_main('grade.py'))
    assert_one_line_error(run_main('grade.py', str(tmp_path / 'none.jsonl')), 'none.jsonl')


@pytest.mark.parametrize('bad', ['--patch_size=6', '--n_head=5', '--eval_interval=0', '--log_interval=0',
                                 '--batch_size=0', '--grad_accum=0'])
def test_train_impossible_settings(run_script, picturebook_dir, train_flags, tmp_path, bad):
    """Values of the right type that cannot work are a user's mistake too: one line naming the flag, never a
    traceback, and never a run that silently trains nothing."""
    flags = [f for f in train_flags if not f.startswith(('--max_iters=', '--n_samples='))]
    p = run_script('train.py', f'--data_dir={picturebook_dir}', f'--out_dir={tmp_path}', *flags, '--max_iters=2',
                   '--n_samples=0', bad)
    assert_one_line_error(p, bad.split('=')[0].lstrip('-'))


@pytest.mark.parametrize('bad', ['--batch_size=0', '--n=-2'])
def test_sample_impossible_settings(run_script, trained, tmp_path, bad):
    """sample.py --batch_size=0 cannot describe anything, and --n counts records (0: all), so a negative n is a
    mistake: both are one line naming the flag, not a traceback or a silently different set of records."""
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--jsonl={trained.data_dir}/test.jsonl',
                   f'--out={tmp_path / "s.jsonl"}', '--max_new_tokens=5', bad)
    assert_one_line_error(p, bad.split('=')[0].lstrip('-'))


@pytest.mark.parametrize('args, words', [
    (['--dataset=imagenet'], 'choose coco, folder or jsonl'),
    (['--dataset=folder', '--images=/no/such/folder'], "--images='/no/such/folder' is not a folder"),
    (['--dataset=jsonl'], '--dataset=jsonl needs --path=FILE'),
    (['--dataset=jsonl', '--path=/no/such.jsonl'], '/no/such.jsonl does not exist'),
    (['--dataset=coco', '--workers=0'], '--workers must be at least 1'),
    (['--dataset=coco', '--n_test=-3'], '--n_test cannot be negative'),
    (['--dataset=coco', '--timeout=0'], '--timeout must be positive'),
])
def test_build_flag_errors(run_main, tmp_path, args, words):
    p = run_main('build.py', f'--out={tmp_path / "d"}', *args)
    assert p.returncode == 1 and words in p.stderr and 'Traceback' not in p.stderr, p.stderr


# -----------------------------------------------------------------------------
# Command-line conventions: --help everywhere, bare booleans, a close flag named, one bounds mechanism.

SCRIPTS = ['train.py', 'sample.py', 'grade.py', 'data.py', 'build.py', 'bench.py', 'model.py', 'serve.py']


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_lists_every_flag_with_its_default_and_comment(run_main, script):
    import importlib
    module = importlib.import_module(script[:-3])
    defaults = module.DEFAULTS if hasattr(module, 'DEFAULTS') else {'size': 'mini', **asdict(VLMConfig())}
    for flag in ('--help', '-h'):
        p = run_main(script, flag)
        assert p.returncode == 0 and p.stderr == '', p.stderr
        lines = p.stdout.splitlines()
        assert lines[0] == 'usage:' and lines[1].strip().startswith(('python', 'torchrun')), p.stdout
        for key, value in defaults.items():
            shown = str(value).lower() if type(value) is bool else str(value)
            at = next((i for i, line in enumerate(lines) if line.strip().startswith(f'--{key}={shown} ') or
                       line.strip() == f'--{key}={shown}'), None)
            assert at is not None, (key, p.stdout)
            line = lines[at] if lines[at].strip() != f'--{key}={shown}' else lines[at] + lines[at + 1]  # a long flag:
            assert len(line.split(None, 1)) == 2, (key, line)  # its comment on the next line; none would leave it bare


def test_help_from_the_command_line_exits_0(run_script):
    p = run_script('train.py', '--help')
    assert p.returncode == 0 and p.stdout.startswith('usage:') and '--max_iters=600' in p.stdout, p.stderr


def test_misspelt_flag_names_the_closest(run_main):
    p = run_main('train.py', '--max_iter=5')
    assert_one_line_error(p, '--max_iter', 'did you mean --max_iters?', '--help')


def test_bare_boolean_means_true_and_false_still_works():
    defaults = dict(yes=False, n=1)
    assert parse_flags(defaults, ['--yes'])['yes'] is True
    assert parse_flags(defaults, ['--yes=false'])['yes'] is False
    with pytest.raises(UserError, match='--n needs a value'):
        parse_flags(defaults, ['--n'])


def test_bounds_are_one_mechanism():
    defaults = dict(batch_size=8, n=0, timeout=1.0)
    minimum = {'batch_size': 1, 'n': 0, 'timeout': '>0'}
    with pytest.raises(UserError, match='^--batch_size must be at least 1$'):
        parse_flags(defaults, ['--batch_size=0'], minimum=minimum)
    with pytest.raises(UserError, match='^--n cannot be negative$'):
        parse_flags(defaults, ['--n=-1'], minimum=minimum)
    with pytest.raises(UserError, match='^--timeout must be positive$'):
        parse_flags(defaults, ['--timeout=0'], minimum=minimum)
    assert parse_flags(defaults, ['--timeout=0.3', '--n=0'], minimum=minimum)['timeout'] == 0.3


def test_grade_accepts_a_bare_yes(run_script, tmp_path):
    """Without a terminal the GPT judge asks for --yes; given bare, it is accepted (here the run stops later, at
    the unreachable server, not at the flag)."""
    samples = tmp_path / 's.jsonl'
    samples.write_text('{"id": "a", "image": "x.png", "text": "A red ball."}\n')
    p = run_script('grade.py', str(samples), '--judge=gpt', '--base_url=http://127.0.0.1:9/v1', '--max_retries=0',
                   '--timeout=1', f'--cache={tmp_path / "c.jsonl"}')
    assert_one_line_error(p, 'add --yes')
    p = run_script('grade.py', str(samples), '--judge=gpt', '--yes', '--base_url=http://127.0.0.1:9/v1',
                   '--max_retries=0', '--timeout=1', f'--cache={tmp_path / "c.jsonl"}')
    assert_one_line_error(p, 'cannot reach')


def test_bench_refuses_flags_it_would_ignore(run_main):
    assert_one_line_error(run_main('bench.py', '--max_iters=5'), '--max_iters')


# -----------------------------------------------------------------------------
# The house: a file a sitting, imports one way, the world without torch.

LAYERS = ['cli', 'picturebook', 'data', 'model', 'optim', 'machine', 'checkpoint', 'chat', 'batch', 'build', 'grade', 'pictures', 'sample',
          'train', 'bench', 'serve']


def test_modules_are_short_and_import_one_way():
    import ast
    import glob
    import os
    from conftest import ROOT
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py')))
    assert sorted(LAYERS) == modules, 'a new module: give it its place in LAYERS'
    for name in modules:
        with open(os.path.join(ROOT, name + '.py')) as f:
            source = f.read()
        assert source.count('\n') <= 500, f'{name}.py has {source.count(chr(10))} lines'
        imported = {a.name.split('.')[0] for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                    for a in node.names} | {node.module for node in ast.walk(ast.parse(source))
                                            if isinstance(node, ast.ImportFrom) and node.module}
        for other in imported & set(modules):
            assert LAYERS.index(other) < LAYERS.index(name), f'{name}.py imports {other}.py, a higher layer'


def test_the_picturebook_world_needs_no_torch():
    import subprocess
    import sys
    from conftest import ROOT
    code = ("import picturebook, random, sys; s = picturebook.random_scene(random.Random(0)); "
            "picturebook.draw_scene(s); picturebook.describe_scene(s, 'short', random.Random(0)); "
            "assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, '-c', code], cwd=ROOT).returncode == 0
