"""
A zoo of unusual picture files, made here, through every path that opens pictures: data.open_image, sample.py
--image and --jsonl, and the folder and JSONL builds (build.py, the folder build against the local chat server).
Each readable picture is used, upright; each unreadable one is said in one line that names it, and skipped; every
good picture's result is written.
"""
import base64
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import build
import data
import sample
from cli import UserError
from servers import LONG, SHORT

pytestmark = pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')  # pytest resets data.py's filter

RED, BLUE = (255, 0, 0), (0, 0, 255)


def png_of_zeros(path, width, height):
    """A valid black 1-bit PNG of any size, written without holding it in memory: a real decompression bomb."""
    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    rows, z = b'\0' * (1 + (width + 7) // 8) * 100, zlib.compressobj(9)
    idat = b''.join(z.compress(rows) for _ in range(height // 100)) + z.flush()
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0))
                + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def halves(width, height):
    """A picture whose left half is red and right half blue."""
    im = Image.new('RGB', (width, height), BLUE)
    im.paste(RED, (0, 0, width // 2, height))
    return im


def make_zoo(folder):
    """Write the zoo into folder. Returns {name: True if it can be read, False if not}."""
    def at(name):
        return os.path.join(folder, name)
    readable = {}

    def good(name, im, **kw):
        im.save(at(name), **kw)
        readable[name] = True

    good('plain.png', Image.new('RGB', (40, 30), (10, 200, 30)))
    for name, orientation, size in (('rotated6.jpg', 6, (64, 32)), ('rotated8.jpg', 8, (48, 24))):
        exif = Image.Exif()
        exif[0x0112] = orientation  # EXIF Orientation: how a phone held on its side says "turn me upright"
        good(name, halves(*size), exif=exif, quality=95)
    good('cmyk.jpg', Image.new('CMYK', (16, 16), (0, 255, 255, 0)))
    good('gray.jpg', Image.new('L', (16, 16), 128))
    good('sixteen_bit.png', Image.fromarray(np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)))
    good('one_bit.png', Image.new('1', (17, 9), 1))
    palette = Image.new('P', (16, 16), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (8, 0, 16, 16))  # right half green; left half index 0, which is transparent
    good('palette_transparent.png', palette, transparency=0)
    good('gray_alpha.png', Image.new('LA', (16, 16), (100, 255)))
    rgba = Image.new('RGBA', (16, 16), (0, 0, 0, 0))  # see-through black: shown white
    rgba.paste((200, 0, 0, 255), (0, 0, 8, 16))
    good('rgba.png', rgba)
    frames = [Image.new('P', (16, 16), i) for i in range(3)]
    good('animated.gif', frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    good('picture.webp', Image.new('RGB', (16, 16), (1, 2, 250)))
    good('picture.bmp', Image.new('RGB', (16, 16), (250, 2, 1)))
    good('picture.tiff', Image.new('RGB', (16, 16), (2, 250, 1)))
    good('thin.png', Image.new('RGB', (10000, 2), (90, 90, 90)))  # huge but allowed
    good('one_pixel.png', Image.new('RGB', (1, 1), (5, 5, 5)))
    good('progressive.jpg', Image.new('RGB', (32, 32), (70, 80, 90)), progressive=True)
    Image.new('RGB', (16, 16), (3, 4, 5)).save(at('png_named.jpg'), format='PNG')
    readable['png_named.jpg'] = True
    with open(at('locked.png'), 'wb') as f:  # no permission to read, unless we are root (who reads it anyway)
        Image.new('RGB', (8, 8)).save(f, format='PNG')
    os.chmod(at('locked.png'), 0)
    readable['locked.png'] = os.geteuid() == 0

    png_of_zeros(at('bomb.png'), 40000, 40000)  # 1.6 billion pixels: over twice Pillow's limit
    png_of_zeros(at('bomb_small.png'), 10000, 10000)  # 100 million: over the limit, under twice it
    whole = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert('RGB').save(whole, format='PNG')
    with open(at('truncated.png'), 'wb') as f:
        f.write(whole.getvalue()[:len(whole.getvalue()) // 2])
    damaged = bytearray(whole.getvalue())
    damaged[60:80] = b'\xff' * 20  # inside the first IDAT: its CRC no longer matches
    with open(at('damaged_crc.png'), 'wb') as f:
        f.write(damaged)
    whole = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert('RGB').save(whole, format='JPEG')
    with open(at('truncated.jpg'), 'wb') as f:
        f.write(whole.getvalue()[:len(whole.getvalue()) // 2])
    open(at('empty.png'), 'wb').close()
    with open(at('text.png'), 'w') as f:
        f.write('this is not a picture\n')
    os.mkdir(at('folder.png'))
    os.symlink(at('nowhere.png'), at('dangling.png'))
    readable.update(dict.fromkeys(['bomb.png', 'bomb_small.png', 'truncated.png', 'damaged_crc.png', 'truncated.jpg',
                                   'empty.png', 'text.png', 'folder.png', 'dangling.png'], False))
    return readable


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('zoo'))
    readable = make_zoo(folder)
    assert len(readable) >= 25
    return folder, readable


def is_red(pixel):
    return pixel[0] > 200 and pixel[2] < 60


def is_blue(pixel):
    return pixel[2] > 200 and pixel[0] < 60


def test_open_image_reads_the_zoo_upright_or_says_why_not_in_one_line(zoo):
    folder, readable = zoo
    for name, ok in readable.items():
        path = os.path.join(folder, name)
        if not ok:
            with pytest.raises(UserError) as e:
                data.open_image(path)
            assert path in str(e.value) and '\n' not in str(e.value), (name, str(e.value))
            continue
        im = data.open_image(path)
        assert im.mode == 'RGB' and im.width * im.height > 0, name
        assert data.load_image(path, 32).shape == (32, 32, 3)
    # a phone's EXIF orientation is applied: the left half (red) of orientation 6 is the top, of 8 the bottom
    six, eight = (np.asarray(data.open_image(os.path.join(folder, n))) for n in ('rotated6.jpg', 'rotated8.jpg'))
    assert six.shape == (64, 32, 3) and is_red(six[4, 16]) and is_blue(six[-5, 16])
    assert eight.shape == (48, 24, 3) and is_blue(eight[4, 12]) and is_red(eight[-5, 12])
    # 16 bits a pixel are scaled to 8, not clipped to white; what is transparent is white
    assert 100 < np.asarray(data.open_image(os.path.join(folder, 'sixteen_bit.png'))).mean() < 155
    palette = np.asarray(data.open_image(os.path.join(folder, 'palette_transparent.png')))
    assert (palette[:, :8] == 255).all() and (palette[:, 8:] == (0, 255, 0)).all()
    rgba = np.asarray(data.open_image(os.path.join(folder, 'rgba.png')))
    assert (rgba[:, :8] == (200, 0, 0)).all() and (rgba[:, 8:] == 255).all()
    with pytest.raises(UserError, match='decompression bomb'):
        data.open_image(os.path.join(folder, 'bomb.png'))


def test_sample_image_uses_each_picture_or_refuses_it_in_one_line(zoo, trained, capsys):
    folder, readable = zoo
    for name, ok in {**readable, 'missing.png': False}.items():
        path = os.path.join(folder, name)
        argv = [f'--out_dir={trained.out_dir}', f'--image={path}', '--max_new_tokens=5', '--device=cpu']
        if ok:
            sample.main(argv)
            assert len(capsys.readouterr().out.strip().splitlines()) == 1, name
        else:
            with pytest.raises(UserError) as e:
                sample.main(argv)
            assert path in str(e.value) and '\n' not in str(e.value), name


def test_sample_image_refuses_a_decompression_bomb_in_one_line(zoo, trained, run_script):
    path = os.path.join(zoo[0], 'bomb.png')
    p = run_script('sample.py', f'--out_dir={trained.out_dir}', f'--image={path}', '--device=cpu')
    assert p.returncode == 1 and p.stderr.startswith('error: ') and p.stderr.count('\n') == 1, p.stderr
    assert path in p.stderr and 'Traceback' not in p.stderr


def zoo_jsonl(zoo, path):
    """A JSONL of every zoo file and one that does not exist, with texts, as a user might have them."""
    folder, readable = zoo
    names = list(readable) + ['missing.png']
    with open(path, 'w') as f:
        for name in names:
            f.write(json.dumps({'id': name, 'image': os.path.join(folder, name), 'short': SHORT, 'long': LONG}) + '\n')
    return {**readable, 'missing.png': False}


def test_sample_jsonl_describes_every_readable_picture_and_says_each_skipped_one(zoo, trained, tmp_path, capsys):
    readable = zoo_jsonl(zoo, tmp_path / 'zoo.jsonl')
    out = tmp_path / 'zoo_samples.jsonl'
    argv = [f'--out_dir={trained.out_dir}', f'--jsonl={tmp_path / "zoo.jsonl"}', f'--out={out}', '--max_new_tokens=5',
            '--batch_size=4', '--device=cpu']
    sample.main(argv)
    printed = capsys.readouterr().out
    said = [line for line in printed.splitlines() if line.startswith('skipped: ')]
    bad = [name for name, ok in readable.items() if not ok]
    assert sorted(next(n for n in bad if os.path.join(zoo[0], n) in line) for line in said) == sorted(bad)
    assert f'{len(bad)} pictures could not be read and were skipped' in printed
    got = data.read_jsonl(out)
    assert [r['id'] for r in got] == [name for name, ok in readable.items() if ok]  # in the input's order
    sample.main(argv)  # a rerun describes nothing twice
    assert f'{len(got)} of {len(readable)} records are already described' in capsys.readouterr().out
    assert data.read_jsonl(out) == got


def test_jsonl_build_keeps_every_readable_picture_and_says_each_skipped_one(zoo, tmp_path, capsys):
    readable = zoo_jsonl(zoo, tmp_path / 'zoo.jsonl')
    out = str(tmp_path / 'built')
    build.main(['--dataset=jsonl', f'--path={tmp_path / "zoo.jsonl"}', '--n_test=2', f'--out={out}'])
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith('skipped record')]
    bad = [name for name, ok in readable.items() if not ok]
    assert len(said) == len(bad) and all(any(os.path.join(zoo[0], n) in line for line in said) for n in bad)
    kept = [r['id'] for s in ('train', 'val', 'test') for r in data.read_jsonl(os.path.join(out, f'{s}.jsonl'))]
    assert sorted(kept) == sorted(name for name, ok in readable.items() if ok)


def test_folder_build_describes_every_readable_picture_upright_and_records_each_skipped_one(zoo, tmp_path, api):
    folder, readable = zoo
    out = str(tmp_path / 'built')
    build.main(['--dataset=folder', f'--images={folder}', '--n_test=2', f'--out={out}', f'--base_url={api.url}/v1',
                '--yes=true', '--workers=2'])
    files = {name: ok for name, ok in readable.items() if not os.path.isdir(os.path.join(folder, name))}
    log = {r['id']: r for r in data.read_log(os.path.join(out, 'build.jsonl'))}
    assert set(log) == set(files)
    for name, ok in files.items():
        assert ('skipped' not in log[name]) == ok, log[name]
        if not ok:
            said = log[name]['skipped']  # the picture's path, as the build reaches it from out
            assert os.path.join(os.path.basename(folder), name) in said and '\n' not in said, said
    kept = [r['id'] for s in ('train', 'val', 'test') for r in data.read_jsonl(os.path.join(out, f'{s}.jsonl'))]
    assert sorted(kept) == sorted(name for name, ok in files.items() if ok)
    sent = [Image.open(io.BytesIO(base64.b64decode(e['body']['messages'][1]['content'][1]['image_url']['url'].split(',')[1])))
            for e in api.log]
    assert len(sent) == sum(files.values())  # one request per readable picture, none for the others
    upright = {im.size: np.asarray(im.convert('RGB')) for im in sent if im.size in ((32, 64), (24, 48))}
    assert is_red(upright[32, 64][4, 16]) and is_blue(upright[32, 64][-5, 16])  # orientation 6: left half on top
    assert is_blue(upright[24, 48][4, 12]) and is_red(upright[24, 48][-5, 12])  # orientation 8: at the bottom
