"""
Checkpoints, written and read in one place: everything needed to describe pictures with a trained model (its
config, weights and tokenizer) and to carry on training it (the optimiser, the step, the run's settings).

    out_dir/ckpt.pt = {'model_args', 'model', 'tokenizer', 'optimizer', 'step', 'best_val_loss', 'config'}
"""
import os
from dataclasses import asdict

import torch

from cli import UserError
from data import Tokenizer
from model import NanoVLM, VLMConfig


def save_checkpoint(path, model, optimizer, tokenizer, step, best_val_loss, config):
    """Write the checkpoint beside path and rename it into place: a crash while saving never destroys the last
    good checkpoint."""
    state = {'model_args': asdict(model.config), 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
             'tokenizer': tokenizer.state(), 'step': step, 'best_val_loss': best_val_loss, 'config': dict(config)}
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
