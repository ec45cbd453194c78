"""
Checkpoints, written and read in one place: everything needed to describe pictures with a trained model (its
config, weights and tokenizer) and to carry on training it (the optimiser, the step, the run's settings).

    out_dir/ckpt.pt = {'model_args', 'model', 'tokenizer', 'optimizer', 'step', 'best_val_loss', 'config', 'resume'}

'resume' holds every random state the run draws from (the batch sampler's and torch's, each process's own) and the
losses since the last log line, so that a resumed run takes exactly the steps, and logs exactly the losses, that the
interrupted one would have. The file is torch.save's zip archive,
which stores a CRC-32 checksum of every record in it; torch.load does not check them, so load_checkpoint does: a
damaged file is said to be damaged, not loaded as weights of noise. A training run also holds its out_dir with a
lock, so that two runs never write into the same folder.
"""
import io
import os
import zipfile
from dataclasses import asdict

import torch

from cli import UserError, hold, write_failed
from data import Tokenizer
from model import NanoVLM, VLMConfig


def save_checkpoint(path, model, optimizer, tokenizer, step, best_val_loss, config, resume=None):
    """Write the checkpoint beside path, on disk, then rename it into place: a crash or a full disk while saving
    never destroys the last good checkpoint, and a failed save leaves no partial file."""
    state = {'model_args': asdict(model.config), 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
             'tokenizer': tokenizer.state(), 'step': step, 'best_val_loss': best_val_loss, 'config': dict(config),
             'resume': resume}
    buf = io.BytesIO()
    torch.save(state, buf)  # in memory first: on a full disk torch.save says only "enforce fail", a file write ENOSPC
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(e, path, last_good(path), [tmp]) from None


def last_good(path):
    """What a failed save leaves at path, said for the user: the last good checkpoint and its step, or none."""
    if not os.path.exists(path):
        return 'no checkpoint yet: this was the first'
    try:  # memory-mapped: only the step is read
        return f"the last good checkpoint, step {torch.load(path, map_location='cpu', mmap=True, weights_only=False)['step']}"
    except Exception:
        return 'the last checkpoint'


def load_checkpoint(path, device='cpu'):
    """The checkpoint at path as a dict. A missing, damaged (its checksums fail) or unreadable file, or weights that
    are not numbers (a run that diverged), is a UserError that says what to do."""
    if not os.path.exists(path):
        raise UserError(f'no checkpoint at {path}; train one with python train.py, or point --out_dir at one')
    again = 'train again, or put back a good copy'
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every record and checks its CRC-32
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f'{path} is not a whole checkpoint ({e}); {again}') from None
    if bad:
        raise UserError(f'{path} is damaged: its record {bad} fails its checksum; {again}')
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise UserError(f'cannot read checkpoint {path}: {e}') from None
    if not isinstance(ckpt, dict) or not {'model_args', 'model', 'tokenizer'} <= set(ckpt):
        raise UserError(f'{path} is not a nanovlms checkpoint (it has no model_args, model and tokenizer)')
    bad = [k for k, v in ckpt['model'].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f'{path} holds weights that are not numbers (NaN or inf, e.g. {bad[0]}): the run that made it '
                        'diverged; train again with a lower --learning_rate, or from an earlier checkpoint')
    return ckpt


def model_from_checkpoint(ckpt):
    """The model and tokenizer a checkpoint holds, ready for inference (weights saved from a torch.compile'd model
    carry an _orig_mod. prefix, which is dropped)."""
    model = NanoVLM(VLMConfig(**ckpt['model_args']))
    model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})
    return model.eval(), Tokenizer.from_state(ckpt['tokenizer'])


def lock_out_dir(out_dir):
    """Hold out_dir for this training run (cli.hold), so a second run into the same folder is refused rather than
    mixing its log and checkpoint with this one's. Keep the returned file open for as long as the run goes on."""
    return hold(os.path.join(out_dir, 'train.lock'), out_dir, 'another training run', 'train into another --out_dir')
