"""
Train a NanoVLM to describe pictures.

    python train.py --size=tiny                                  # CPU, a minute: the picture-book world
    python train.py --size=mini --data_dir=data/coco --device=cuda
    python train.py --size=tiny --init_from=resume               # carry on from out_dir/ckpt.pt
    torchrun --standalone --nproc_per_node=8 train.py --size=base --data_dir=data/coco   # DDP, one node

Every value below is a default; `--key=value` overrides it (its type is checked) and `--size=NAME` first applies a
preset: the model fields of model.SIZES[NAME] and the run settings of RUNS[NAME] (tiny's are the speedrun's: Muon for
the hidden matrices, optim.py, and a 600-step schedule; README, "The speedrun"). Each step (each micro-step, with
--grad_accum) trains on one batch of images with their short or their long descriptions, styles taking turns; the
decoder learns which one to write from the style token that starts the text (see data.py). Every eval_interval steps
the run measures validation loss and the image gain (how much worse that loss is with the pictures shuffled: 0 for a
model that does not look), grades greedy descriptions of eval_scenes validation scenes (grounding precision and
recall; --target_grounding stops the run where both reach it), prints a few of them beside the truth so you can
watch the model learn, and saves out_dir/ckpt.pt. Every
log_interval steps it prints (and appends to out_dir/train_log.jsonl) each style's loss, the time a step takes and
the MFU: the share of the hardware's peak FLOP/s that the model's own arithmetic (model.flops_per_image) achieves.

Ctrl-C (or SIGTERM) stops the run after the step it is taking and saves there, after that step's evaluation if one
is due. --init_from=resume goes on from out_dir/ckpt.pt with the checkpoint's settings and random states, and takes
exactly the steps, and logs exactly the losses, of a run never stopped. Only the flags typed on the command line
count (--size=NAME as itself, not its preset's values): those that change no step (more steps, another device,
other logging) may differ, any other that contradicts the checkpoint is refused. (checkpoint.py does the resuming.)

Under torchrun the same script trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs): every process
reads its own share of each global batch (batch_size images per process and micro-step), gradients are averaged
once per step (not per micro-step), and only the first process logs and saves. The loss is normalised by the
target tokens of the whole global batch, and the connector's BatchNorm uses global-batch statistics, so N
processes take the steps one process would take on the union of their batches (exactly in float32, as a test
checks; in bfloat16 up to each process's own rounding). A checkpoint saved by another number of processes resumes
too, and the run says that it is no longer exact.
"""
import gc
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import data
import grade
import pictures
from checkpoint import (StopRequest, any_process, keep_log_until, load_checkpoint, lock_out_dir, restore_state,
                        resume_settings, resume_state, save_checkpoint)
from cli import UserError, given_flags, parse_flags, pick_device, run_cli
from machine import keep_freed_memory, peak_flops, precision
from data import Split
from sample import describe
from model import SIZES, NanoVLM, VLMConfig, check_config, config_from, global_sum
from optim import configure_optimizer

DEFAULTS = dict(
    # run
    size='tiny',                 # model preset (model.SIZES) and run settings (RUNS below)
    out_dir='out-tiny',          # where ckpt.pt goes
    data_dir=data.PICTUREBOOK_DIR,  # a dataset folder (data.py, build.py); picture-book is drawn here if it is missing
    init_from='scratch',         # 'scratch' or 'resume' (from out_dir/ckpt.pt)
    styles='short,long',         # which descriptions to train on, taking turns step by step
    style_token=True,            # start each text with its style's token (false: with <|endoftext|>, styles unmarked)
    eval_interval=100,           # steps between validation, samples and a checkpoint
    eval_iters=10,               # batches per split and style to estimate a loss
    log_interval=25,             # steps between progress lines
    n_samples=3,                 # validation images described at each evaluation, printed beside the truth
    sheet=8,                     # validation images on the sample sheet drawn at each evaluation (0: none)
    eval_scenes=100,             # validation scenes described greedily and graded (grounding) at each evaluation
    target_grounding=0.0,        # stop at the first evaluation whose grounding precision and recall reach this (0: off)
    # optimisation (the paper: learning rate 1e-3; it states no other setting)
    batch_size=32,               # images per micro-step
    grad_accum=1,                # micro-steps per optimiser step
    max_iters=600,               # optimiser steps
    learning_rate=3e-3,          # peak learning rate (AdamW's)
    muon_lr=0.01,                # Muon's peak learning rate for the hidden matrices (0: AdamW for every parameter)
    enc_lr_scale=1.0,            # the encoder's weight matrices' learning rate as a share of the rest's (wide: less)
    min_lr=0.0,                  # learning rate at the end of the cosine
    warmup_iters=50,             # linear warm-up steps
    weight_decay=0.1,            # AdamW decay of matrices and embeddings
    beta1=0.9,                   # AdamW beta1
    beta2=0.99,                  # AdamW beta2
    grad_clip=1.0,               # clip the gradient norm to this (0: off)
    # system
    device='auto',               # 'auto' picks cuda, then mps, then cpu
    dtype='auto',                # 'auto': bfloat16 autocast on CUDA where supported, else float32
    compile=False,               # torch.compile the model (worth it on a GPU for long runs)
    peak_flops=0.0,              # FLOP/s that MFU is a share of (0: a known GPU's bf16 peak; measured on a CPU)
    seed=1337,                   # seeds batches, initialisation and sampling
    # model: every VLMConfig field is a flag as well (--n_layer=6 ...); see model.py
    **{k: v for k, v in asdict(VLMConfig(**SIZES['tiny'])).items() if k != 'vocab_size'},
)
PAPER_RUN = dict(muon_lr=0.0, warmup_iters=100, min_lr=1e-4)  # the paper's sizes: AdamW alone (the paper's optimiser)
RUNS = {  # what --size sets besides the model: the paper's sizes are runs for one GPU (the paper: lr 1e-3, no batch)
    'tiny': {k: DEFAULTS[k] for k in ('out_dir', 'batch_size', 'max_iters', 'learning_rate', 'muon_lr', 'warmup_iters',
                                      'min_lr', 'eval_interval')},  # the defaults
    # mini at tiny's lr and batch, for a CPU, its 400-wide encoder's matrices at a tenth (README, "The paper's sizes")
    'mini': dict(out_dir='out-mini', batch_size=32, max_iters=20000, learning_rate=3e-3, enc_lr_scale=0.1,
                 eval_interval=1000, **PAPER_RUN),
    # base and large: the same rates for their wider encoders (a probe, not a run: README), a larger batch for a GPU
    'base': dict(out_dir='out-base', batch_size=64, max_iters=20000, learning_rate=3e-3, enc_lr_scale=0.1,
                 eval_interval=1000, **PAPER_RUN),
    'large': dict(out_dir='out-large', batch_size=64, max_iters=20000, learning_rate=3e-3, enc_lr_scale=0.1,
                  eval_interval=1000, **PAPER_RUN),
}
PRESETS = {name: {**SIZES[name], **RUNS[name]} for name in SIZES}
MINIMUM = {'batch_size': 1, 'grad_accum': 1, 'max_iters': 1, 'eval_interval': 1, 'eval_iters': 1, 'log_interval': 1,
           'n_samples': 0, 'sheet': 0, 'eval_scenes': 0, 'target_grounding': 0,
           'warmup_iters': 0}  # flags whose smaller values cannot work


# -----------------------------------------------------------------------------
# The schedule, evaluation and a glimpse of what the model writes

def learning_rate(step, c):
    """Linear warm-up, then cosine decay to min_lr at max_iters."""
    if step < c.warmup_iters:
        return c.learning_rate * (step + 1) / c.warmup_iters
    progress = min(1.0, (step - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)


@torch.no_grad()
def estimate_loss(model, splits, styles, c, device, ctx):
    """Mean loss over eval_iters batches for each split and style (fixed batches, so runs compare), then for each
    style the image gain: how much higher the validation loss is with the pictures shuffled, each text read under
    another picture of its batch. A model that writes from the text alone, without looking, gains nothing."""
    model.eval()
    out, gain = {}, {}
    for name, split in splits.items():
        for style in styles:
            rng = np.random.default_rng(0)
            losses, shuffled = [], []
            for _ in range(c.eval_iters):
                images, x, y = split.batch(style, c.batch_size, rng, device)
                with ctx:
                    losses.append(model(images, x, y)[1].item())
                    if name == 'val':
                        shuffled.append(model(images.roll(1, dims=0), x, y)[1].item())
            out[f'{name}/{style}'] = float(np.mean(losses))
            if shuffled:
                gain[f'gain/{style}'] = float(np.mean(shuffled)) - out[f'{name}/{style}']
    model.train()
    return {**out, **gain}


def describe_validation(model, tokenizer, split, c, scenes, ctx):
    """Greedy short descriptions of the first max(n_samples, sheet, eval_scenes) validation images, and, where their
    scenes are known (the picture-book world), the grounding of the first eval_scenes (grade.py's judge): the share
    of the facts stated that are true and of the objects there that are named, as {'ground/precision',
    'ground/recall'} (empty without scenes)."""
    n = min(max(c.n_samples, c.sheet, c.eval_scenes), len(split.images))
    model.eval()
    with ctx:
        texts = [text for i in range(0, n, c.batch_size) for text in describe(
            model, tokenizer, split.images[i:min(n, i + c.batch_size)], 'short' if split.style_token else None,
            temperature=0)]
    model.train()
    graded = [{'id': i, 'text': text, 'scene': scene} for i, (text, scene) in enumerate(zip(texts[:c.eval_scenes], scenes))]
    if not graded or any(g['scene'] is None for g in graded):
        return texts, {}
    scores = grade.grounding(graded)['scores']
    return texts, {f'ground/{k}': scores[k]['mean'] or 0.0 for k in ('precision', 'recall')}


def show_samples(texts, tokenizer, split, c, scenes, step):
    """n_samples descriptions printed beside the truth, and a sample sheet of the first `sheet` (with every false
    fact marked, where the scenes are known) in out_dir/samples/, one per evaluation, so that flipping through them
    shows the model learning to look."""
    for i, text in enumerate(texts[:c.n_samples]):
        print(f'  truth: {tokenizer.decode(split.tokens[i, 0, 1:].tolist())}\n  model: {text}')
    if c.sheet:
        os.makedirs(os.path.join(c.out_dir, 'samples'), exist_ok=True)
        path = os.path.join(c.out_dir, 'samples', f'step-{step:06d}.png')
        counts = [n for n in pictures.sample_sheet(split.images[:c.sheet], texts[:c.sheet], path, scenes=scenes[:c.sheet],
                                                   title=f'Step {step}, greedy short descriptions.') if n]
        true, stated = sum(t for t, _ in counts), sum(s for _, s in counts)
        print(f'  sample sheet {path}' + (f': {true} of the {stated} facts stated are true' if counts else ''))


# -----------------------------------------------------------------------------
# One optimiser step, as train() takes it and bench.py times it

def train_step(run_model, model, optimizer, styles, step, c, ctx, world, get_batch):
    """c.grad_accum micro-steps, each on get_batch(style) -> (images, x, y), styles taking turns; then clipping and
    the optimiser (optim.py). run_model is the model as it runs (compiled, wrapped in DDP or neither), model the
    module underneath.
    Returns ({style: its loss over the global batch, a tensor, averaged over its micro-steps}, FLOPs of this
    process): with --grad_accum=2 a step trains on both styles, and both are logged."""
    ddp, flops, losses = isinstance(run_model, DistributedDataParallel), 0, {}
    for micro in range(c.grad_accum):
        style = styles[(step * c.grad_accum + micro) % len(styles)]
        images, x, y = get_batch(style)
        # gradients are averaged across processes once, after the last micro-step
        with run_model.no_sync() if ddp and micro < c.grad_accum - 1 else nullcontext():
            with ctx:
                _, loss = run_model(images, x, y)
            # the mean over the target tokens of the global batch: the same loss however the batch is split
            targets = (y != -1).sum()
            total = global_sum(targets)
            (loss * targets * world / total / c.grad_accum).backward()
        losses.setdefault(style, []).append(global_sum(loss.detach() * targets) / total)
        flops += len(images) * model.flops_per_image(x.size(1))
    if c.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {style: sum(ls) / len(ls) for style, ls in losses.items()}, flops


# -----------------------------------------------------------------------------
# A run, in the order it happens: its processes and device, its out_dir (one run at a time, never a trained model
# silently replaced, a resumed run that takes exactly the steps the interrupted one would have taken), its data,
# its model, then the loop. The run's state lives in one namespace, r.

def train(c, given=()):
    """Train with the settings c (a namespace of DEFAULTS); given: the flags typed on the command line, which on
    resume must agree with the checkpoint (a preset counts as the one flag --size)."""
    styles = check_settings(c)
    r = start_processes(c)
    r.styles = styles
    try:
        ckpt = open_out_dir(c, r, given)
        load_data(c, r, resumed=ckpt is not None)
        build_model(c, r, ckpt)
        del ckpt
        loop(c, r)
    finally:  # after an error too (a one-line one, or a full disk), without waiting for processes that may not come
        if r.ddp:  # DDP's reducer holds the process group: let go of it first, while the interpreter is whole
            r.run_model = r.eval_model = None
            gc.collect()
            dist.destroy_process_group()
        if r.lock:
            r.lock.close()
    return r.model


def check_settings(c):
    """The styles to train on, once the flags that could only fail later (after the data is drawn) are checked."""
    styles = [s for s in c.styles.split(',') if s]
    if not styles or any(s not in data.STYLES for s in styles):
        raise UserError(f'--styles={c.styles}: give short, long or short,long')
    if c.init_from not in ('scratch', 'resume'):
        raise UserError(f"--init_from={c.init_from}: use 'scratch' or 'resume'")
    check_config(config_from({**vars(c), 'vocab_size': 1}))
    return styles


def start_processes(c):
    """This process's device and, under torchrun, its place among the others (NCCL on GPUs, gloo on CPUs); the first
    process then holds out_dir for as long as it runs (a lock the operating system drops when it ends)."""
    ddp = 'RANK' in os.environ  # started by torchrun
    rank, world = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])) if ddp else (0, 1)
    if ddp and (c.device.startswith('cuda') or c.device == 'auto' and torch.cuda.is_available()):
        device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
        torch.cuda.set_device(device)
    else:
        device = pick_device(c.device)
    keep_freed_memory(device)
    if ddp:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    os.makedirs(c.out_dir, exist_ok=True)
    dtype, ctx = precision(device, c.dtype)
    return SimpleNamespace(ddp=ddp, rank=rank, world=world, master=rank == 0, device=device, dtype=dtype, ctx=ctx,
                           log=print if rank == 0 else lambda *args, **kwargs: None,  # one process speaks for all
                           ckpt_path=os.path.join(c.out_dir, 'ckpt.pt'),
                           log_path=os.path.join(c.out_dir, 'train_log.jsonl'),
                           lock=lock_out_dir(c.out_dir) if rank == 0 else None)


def open_out_dir(c, r, given):
    """The checkpoint to resume from (its settings taken into c), or None for a run from scratch, which is refused
    where it would replace a trained model; the log of an earlier run that saved no checkpoint is kept aside."""
    if c.init_from == 'resume':
        ckpt = load_checkpoint(r.ckpt_path)
        resume_settings(c, ckpt['config'], set(given))
        return ckpt
    if os.path.exists(r.ckpt_path):
        raise UserError(f"{c.out_dir} already holds a trained model (ckpt.pt, step {load_checkpoint(r.ckpt_path)['step']}): "
                        f'carry on training it with --init_from=resume, or train a new one into another --out_dir '
                        f'(delete {c.out_dir} to start over)')
    if r.master and os.path.exists(r.log_path):
        os.replace(r.log_path, r.log_path + '.old')
        print(f'kept the log of an earlier run that saved no checkpoint as {r.log_path}.old')
    return None


def load_data(c, r, resumed):
    """The tokenizer and the prepared train and val splits (the first process draws and prepares a missing
    picture-book world while the others wait), and the scenes of the validation images on the sample sheet."""
    if r.master:
        r.tokenizer = data.ensure_dataset(c.data_dir, c.img_size, meanwhile=load_torch_compiler)
    if r.ddp:
        dist.barrier()
    if not r.master:
        r.tokenizer = data.ensure_dataset(c.data_dir, c.img_size)
    r.splits = {name: Split(c.data_dir, name, c.img_size, c.style_token) for name in ('train', 'val')}
    r.val_scenes = [rec.get('scene') for rec in data.read_jsonl(os.path.join(c.data_dir, 'val.jsonl'))
                    [:max(c.sheet, c.eval_scenes)]]
    if not resumed:  # room for the longest text (a resumed model keeps the size it was made with)
        c.block_size = max(c.block_size, max(s.tokens.shape[2] for s in r.splits.values()))


def load_torch_compiler():
    """torch.optim imports torch._dynamo with the first optimiser, a second's work on a CPU: a first run imports it
    here, while other processes draw the picture-book world."""
    import torch._dynamo  # noqa: F401


def build_model(c, r, ckpt):
    """The model and its optimiser, fresh from the seed or as the checkpoint left them (with every random state the
    run draws from), wrapped for the run (compiled, DDP); and the peak FLOP/s that MFU is a share of."""
    torch.manual_seed(c.seed)
    r.rng = np.random.default_rng(c.seed)
    r.model = NanoVLM(config_from({**vars(c), 'vocab_size': len(r.tokenizer)})).to(r.device)
    r.optimizer = configure_optimizer(r.model, c.weight_decay, c.learning_rate, (c.beta1, c.beta2), r.device.type,
                                      c.enc_lr_scale, c.muon_lr, r.dtype)
    r.step, r.interval, r.resumed = 0, {}, ckpt is not None  # interval: style -> losses since the last progress line
    if ckpt:
        restore(c, r, ckpt)
    counts = r.model.param_counts()
    r.log(f"NanoVLM: {counts['total'] / 1e6:.2f}M parameters (encoder {counts['encoder'] / 1e6:.2f}M, connector "
          f"{counts['connector'] / 1e6:.2f}M, decoder {counts['decoder'] / 1e6:.2f}M), vocabulary {len(r.tokenizer)}, "
          f"{r.model.n_prefix} visual tokens, on {r.device} in {r.dtype}" + (f', {r.world} processes' if r.ddp else ''))
    r.eval_model = torch.compile(r.model) if c.compile else r.model
    r.run_model = DistributedDataParallel(r.eval_model, device_ids=[r.device.index] if r.device.type == 'cuda' else None) \
        if r.ddp else r.eval_model
    r.peak = None  # only the first process measures it and logs
    if r.master:
        r.peak, peak_source = peak_flops(r.device, r.dtype, c.peak_flops)
        print(f'MFU is a share of {r.peak / 1e12:.3g} TFLOP/s ({peak_source})')


def restore(c, r, ckpt):
    """Weights, optimiser, step, random states and the log as the checkpoint left them."""
    if ckpt['tokenizer'] != r.tokenizer.state():
        raise UserError(f'{c.data_dir} has a different vocabulary from the checkpoint; resume on the same data')
    r.model.load_state_dict(ckpt['model'])
    try:
        r.optimizer.load_state_dict(ckpt['optimizer'])
    except ValueError as e:  # the optimiser's parameter groups differ: saved by another version of this code
        raise UserError(f'{r.ckpt_path} was saved by a train.py that grouped the parameters differently ({e}); '
                        f'resume it with that version, or train a new model into another --out_dir') from None
    r.step = ckpt['step']
    if ckpt.get('resume'):
        r.interval, saved = restore_state(r.rng, ckpt['resume'], r.rank, r.device)
        if saved != r.world:
            r.log(f'{r.ckpt_path} was saved by {saved} process{"es" * (saved > 1)} and this run has {r.world}: it goes '
                  f'on with {r.world * c.batch_size} images a step (it was {saved * c.batch_size}) and other dropout '
                  f'draws, so it is no longer the run {saved} would have taken')
    else:  # a checkpoint from before random states were saved: fresh batches, not a replay of the first ones
        r.rng = np.random.default_rng([c.seed, r.step])
    if r.master:
        keep_log_until(r.log_path, r.step)
    r.log(f'resuming from {r.ckpt_path} at step {r.step}')


def loop(c, r):
    """The steps from r.step to max_iters: an evaluation (and a checkpoint) every eval_interval steps and at the
    end, a progress line every log_interval steps. Ctrl-C or SIGTERM stops it after the step it is taking, evaluated
    first if it is an evaluation's step, so that the resumed run logs exactly what an uninterrupted one would."""
    stop = StopRequest()
    r.step_start, r.saved_at, r.flops, r.eval_seconds = r.step, None, 0, 0.0
    r.t0 = r.t_start = time.time()  # t0: the start of the progress line's steps, less the evaluations since
    try:
        while True:
            last = r.step >= c.max_iters
            if (r.step % c.eval_interval == 0 or last) and not (r.resumed and r.step == r.step_start):  # logged
                if evaluate(c, r, last):
                    r.log(f'reached the target: grounding precision and recall >= {c.target_grounding} at step {r.step}')
                    break
            if last:
                break
            if stop.agreed(r.ddp, r.device):
                save_and_stop(c, r)
            lr = learning_rate(r.step, c)
            for group in r.optimizer.param_groups:
                group['lr'] = lr * group.get('lr_scale', 1.0)  # checkpoints before enc_lr_scale have none
            losses, flops = train_step(r.run_model, r.model, r.optimizer, r.styles, r.step, c, r.ctx, r.world,
                                       lambda style: r.splits['train'].batch(style, c.batch_size, r.rng, r.device,
                                                                             r.rank, r.world))
            for style, loss in losses.items():  # tensors: no wait for the device until the line is due
                r.interval.setdefault(style, []).append(loss)
            r.flops += flops
            r.step += 1
            if r.step % c.log_interval == 0:
                log_progress(c, r, lr)
        if r.ddp:
            dist.barrier()  # the first process may still be saving: nobody leaves before it is done
        took = time.time() - r.t_start
        r.log(f'done: {r.step} steps in {took:.0f}s ({took - r.eval_seconds:.1f}s training, {r.eval_seconds:.1f}s '
              f'evaluation), checkpoint {r.ckpt_path}')
    finally:
        stop.restore()


def evaluate(c, r, last):
    """Validation losses, image gain and grounding, samples, the sample sheet and loss.png (the first process), then
    a checkpoint, except at the step the run started from, which has nothing new to save. Not training time.
    Returns whether grounding precision and recall both reached --target_grounding (every process agrees)."""
    t, reached = time.time(), False
    calibrate(c, r)
    if r.master:
        losses = estimate_loss(r.eval_model, r.splits, r.styles, c, r.device, r.ctx)
        texts, grounding = describe_validation(r.model, r.tokenizer, r.splits['val'], c, r.val_scenes, r.ctx)
        losses.update(grounding)
        print(f'step {r.step}: ' + ', '.join(f'{k} {v:.3f}' for k, v in losses.items()))
        write_log(r, {'step': r.step, 'eval': losses})
        show_samples(texts, r.tokenizer, r.splits['val'], c, r.val_scenes, r.step)
        pictures.loss_curves(r.log_path, os.path.join(c.out_dir, 'loss.png'))
        reached = bool(c.target_grounding and grounding and r.step > r.step_start
                       and min(grounding.values()) >= c.target_grounding)
    if c.target_grounding:  # the first process judged; the others hear it
        reached = any_process(reached, r.ddp, r.device)
    if r.step > r.step_start or last:
        save(c, r)
    took = time.time() - t
    r.eval_seconds += took
    r.t0 += took
    return reached


def calibrate(c, r):
    """The connector's BatchNorm statistics over 20 fixed training batches (every process: it sums over them)."""
    calib_rng = np.random.default_rng(0)
    r.model.calibrate(r.splits['train'].batch('short', c.batch_size, calib_rng, r.device)[0] for _ in range(20))


def save(c, r):
    """Every process hands over its random state; the first one saves."""
    state = resume_state(r.rng, r.ddp, r.interval, r.device)
    if r.master:
        save_checkpoint(r.ckpt_path, r.model, r.optimizer, r.tokenizer, r.step, vars(c), state)
    r.saved_at = r.step


def save_and_stop(c, r):
    """Save at the step reached (unless its evaluation just did), say how to go on, and stop."""
    if r.saved_at != r.step:
        calibrate(c, r)
        save(c, r)
    if r.ddp:
        dist.barrier()  # the first process is saving: nobody leaves (and is torn down) before it is done
    r.log(f'interrupted at step {r.step}: saved {r.ckpt_path}; go on with '
          f'python train.py --init_from=resume --out_dir={c.out_dir}')
    raise KeyboardInterrupt


def log_progress(c, r, lr):
    """Each style's mean loss since the last line, the learning rate, time a step, MFU and time left."""
    means = {s: torch.stack(r.interval[s]).mean().item() for s in r.styles if s in r.interval}
    t1 = time.time()
    ms = (t1 - r.t0) * 1000 / c.log_interval
    mfu = r.flops / (t1 - r.t0) / r.peak if r.peak else None
    eta = (t1 - r.t_start) / (r.step - r.step_start) * (c.max_iters - r.step)
    r.log(f'step {r.step}/{c.max_iters} | loss ' + ', '.join(f'{s} {v:.3f}' for s, v in means.items())
          + f' | lr {lr:.2e} | {ms:.0f} ms/step | ' + (f'mfu {100 * mfu:.0f}% | ' if mfu else '')
          + f'eta {int(eta // 60)}m{int(eta % 60):02d}s')
    if r.master:
        write_log(r, {'step': r.step, 'train': means, 'lr': lr, 'ms': ms, 'mfu': mfu})
    r.t0, r.flops, r.interval = t1, 0, {}


def write_log(r, entry):
    """One line of train_log.jsonl, on disk at once; a full disk stops the run in one line, the checkpoint kept."""
    data.append_jsonl(r.log_path, [entry], kept=f'{r.log_path} up to step {r.step} and the last checkpoint')


def main(argv):
    c = SimpleNamespace(**parse_flags(DEFAULTS, argv, PRESETS, MINIMUM, __doc__, ['train', 'model']))
    train(c, given_flags(argv))


if __name__ == '__main__':
    run_cli(main)
