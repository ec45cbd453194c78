"""
Checkpoints, written and read in one place: everything needed to describe pictures with a trained model (its
config, weights and tokenizer) and to carry on training it (the optimiser, the step, the run's settings).

    out_dir/ckpt.pt = {'model_args', 'model', 'tokenizer', 'optimizer', 'step', 'config', 'resume'}

'resume' holds every random state the run draws from (the batch sampler's and torch's, each process's own) and the
losses since the last log line, so that a resumed run takes exactly the steps, and logs exactly the losses, that the
interrupted one would have (resume_state, restore_state, below with the rest of resuming). The file is torch.save's
zip archive, which stores a CRC-32 checksum of every record in it; torch.load does not check them, so
load_checkpoint does: a damaged file is said to be damaged, not loaded as weights of noise. A checkpoint is read
with torch's safe loader (weights_only): tensors, numbers, strings, lists and dicts, nothing else, so a ckpt.pt from
a classmate or a download cannot run code when it is opened. A training run also holds its out_dir with a lock, so
that two runs never write into the same folder, and Ctrl-C (or SIGTERM) asks it to save before it stops.
"""
import io
import os
import pickle
import signal
import threading
import zipfile
from dataclasses import asdict

import torch
import torch.distributed as dist

import data
from cli import UserError, hold, write_failed
from data import Tokenizer
from model import NanoVLM, VLMConfig, global_sum


def save_checkpoint(path, model, optimizer, tokenizer, step, config, resume=None):
    """Write the checkpoint beside path, on disk, then rename it into place: a crash or a full disk while saving
    never destroys the last good checkpoint, and a failed save leaves no partial file."""
    state = {'model_args': asdict(model.config), 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
             'tokenizer': tokenizer.state(), 'step': step, 'config': dict(config),
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
        return f"the last good checkpoint, step {torch.load(path, map_location='cpu', mmap=True, weights_only=True)['step']}"
    except Exception:
        return 'the last checkpoint'


def load_checkpoint(path, device='cpu'):
    """The checkpoint at path as a dict. A missing, damaged (its checksums fail) or unreadable file, one that holds
    anything but tensors and plain values (whose unpickling could run code), or weights that are not numbers (a run
    that diverged), is a UserError that says what to do."""
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
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # the safe loader met something else: a class, a function, code to run
        raise UserError(f'{path} holds objects other than tensors and plain values (unpickling them could run any '
                        'code), so it is not loaded; use a checkpoint saved by train.py') from None
    except Exception as e:
        raise UserError(f'cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}') from None
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


# -----------------------------------------------------------------------------
# Stopping and resuming a run: its settings, its random states and its log, so that it takes exactly the steps the
# interrupted run would have taken; and a polite stop that saves first.

CHANGEABLE_ON_RESUME = ('max_iters', 'eval_interval', 'eval_iters', 'log_interval', 'n_samples', 'sheet', 'eval_scenes',
                        'target_grounding', 'device', 'dtype', 'compile', 'peak_flops')  # they change no step


BEFORE_THEY_EXISTED = {'merge': 1, 'muon_lr': 0.0}  # settings an older checkpoint lacks: what it trained with


def resume_settings(c, saved, given):
    """Take the run's settings from the checkpoint (saved). Only the flags typed on the command line (given; a
    preset counts as the one flag --size) may differ, and only those in CHANGEABLE_ON_RESUME (more steps, another
    device, other logging): any other that contradicts the checkpoint is refused."""
    for key, value in {**BEFORE_THEY_EXISTED, **saved}.items():
        if key in ('init_from', 'out_dir') or key in CHANGEABLE_ON_RESUME and key in given or not hasattr(c, key):
            continue
        if key in given and getattr(c, key) != value:
            raise UserError(f'--{key}={getattr(c, key)} contradicts the checkpoint in {c.out_dir}, trained with '
                            f'--{key}={value}; leave it out to resume, or train a new model into another --out_dir')
        setattr(c, key, value)


def resume_state(rng, ddp, interval, device):
    """What a resumed run needs to go on exactly as this one would: every random state it draws from, the batch
    sampler's (the same in every process, which all draw the same global batch) and torch's (dropout: each process
    its own, on its device, gathered to the first process for saving), and the losses of the steps since the last
    log line (style -> list of floats)."""
    mine = {'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state(device) if device.type == 'cuda' else None}
    every = [None] * dist.get_world_size() if ddp else [mine]
    if ddp:
        dist.all_gather_object(every, mine)
    return {'batches': rng.bit_generator.state, 'processes': every,
            'interval': {style: [loss.item() for loss in losses] for style, losses in interval.items()}}


def restore_state(rng, state, rank, device):
    """Set the random states saved by resume_state; returns (the losses since the last log line, as tensors on
    device; how many processes saved them). A checkpoint saved by another number of processes still resumes (the
    batch sampler's state is global), but a process it has no state for keeps the seed's, and the global batch is
    processes x batch_size: the run is then no longer the one the saving run would have taken."""
    rng.bit_generator.state = state['batches']
    saved = state['processes']
    if rank < len(saved):
        torch.set_rng_state(saved[rank]['torch'])
        if saved[rank]['cuda'] is not None and device.type == 'cuda':
            torch.cuda.set_rng_state(saved[rank]['cuda'], device)
    interval = {style: [torch.tensor(loss, device=device) for loss in losses]
                for style, losses in state['interval'].items()}
    return interval, len(saved)


def keep_log_until(log_path, step):
    """Drop the log lines of steps after the checkpoint's: the resumed run writes them again, exactly."""
    if os.path.exists(log_path):
        data.write_jsonl(log_path, [r for r in data.read_log(log_path) if r['step'] <= step])


def any_process(flag, ddp, device):
    """Whether flag is true in this process or, under DDP, in any: a vote every process must call at the same point,
    a tensor on the run's device (NCCL, the GPUs' backend, sums nothing that lives on the CPU)."""
    return bool(global_sum(torch.tensor([float(flag)], device=device)) > 0) if ddp else bool(flag)


class StopRequest:
    """Ctrl-C (SIGINT) or a polite kill (SIGTERM) asks the run to stop after the step it is taking: it then saves
    a checkpoint at that step and says how to go on. A second Ctrl-C stops at once."""

    def __init__(self):
        self.asked, self.previous = False, {}
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.ask)

    def ask(self, signum, frame):
        self.asked = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def agreed(self, ddp, device):
        """Whether to stop now; under DDP every process stops at the same step, when any was asked."""
        return any_process(self.asked, ddp, device)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def lock_out_dir(out_dir):
    """Hold out_dir for this training run (cli.hold), so a second run into the same folder is refused rather than
    mixing its log and checkpoint with this one's. Keep the returned file open for as long as the run goes on."""
    return hold(os.path.join(out_dir, 'train.lock'), out_dir, 'another training run', 'train into another --out_dir')
