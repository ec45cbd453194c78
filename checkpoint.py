"""
Checkpoints, written and read in one place: everything needed to describe pictures with a trained model (its
config, weights and tokenizer) and to carry on training it (the optimiser, the step, the run's settings).

    out_dir/ckpt.pt = {'model_args', 'model', 'tokenizer', 'optimizer', 'step', 'best_val_loss', 'config', 'rng'}

'rng' holds every random state the run draws from (the batch sampler's and torch's, each process's own), so that a
resumed run takes exactly the steps the interrupted one would have taken. A training run also holds its out_dir
with a lock, so that two runs never write into the same folder.
"""
import os
from dataclasses import asdict

import torch

from cli import UserError
from data import Tokenizer
from model import NanoVLM, VLMConfig


def save_checkpoint(path, model, optimizer, tokenizer, step, best_val_loss, config, rng=None):
    """Write the checkpoint beside path and rename it into place: a crash while saving never destroys the last
    good checkpoint."""
    state = {'model_args': asdict(model.config), 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
             'tokenizer': tokenizer.state(), 'step': step, 'best_val_loss': best_val_loss, 'config': dict(config),
             'rng': rng}
    torch.save(state, path + '.tmp')
    os.replace(path + '.tmp', path)


def load_checkpoint(path, device='cpu'):
    """The checkpoint at path as a dict; a missing or unreadable file is a UserError."""
    if not os.path.exists(path):
        raise UserError(f'no checkpoint at {path}; train one with python train.py, or point --out_dir at one')
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise UserError(f'cannot read checkpoint {path}: {e}')


def model_from_checkpoint(ckpt):
    """The model and tokenizer a checkpoint holds, ready for inference (weights saved from a torch.compile'd model
    carry an _orig_mod. prefix, which is dropped)."""
    model = NanoVLM(VLMConfig(**ckpt['model_args']))
    model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})
    return model.eval(), Tokenizer.from_state(ckpt['tokenizer'])


def lock_out_dir(out_dir):
    """Hold out_dir for this training run, so a second run into the same folder is refused rather than mixing its
    log and checkpoint with this one's. The lock is the operating system's (flock), which it drops when the process
    ends however it ends, kill -9 included: a killed run never leaves the folder locked. Keep the returned file open
    for as long as the run goes on."""
    f = open(os.path.join(out_dir, 'train.lock'), 'a+')
    try:
        if os.name == 'nt':
            import msvcrt
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise UserError(f'{out_dir} is in use by another training run{f" (process {holder})" if holder else ""}; '
                        'wait for it to finish, or train into another --out_dir')
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
