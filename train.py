"""
Train a NanoVLM to describe pictures.

    python train.py --size=tiny                                  # CPU, minutes: the picture-book world
    python train.py --size=mini --data_dir=data/coco --device=cuda
    python train.py --size=tiny --init_from=resume               # carry on from out_dir/ckpt.pt
    torchrun --standalone --nproc_per_node=8 train.py --size=base --data_dir=data/coco   # DDP, one node

Every value below is a default; `--key=value` overrides it (its type is checked) and `--size=NAME` first applies a
preset: the model fields of model.SIZES[NAME] and the run settings of RUNS[NAME]. Each step trains on one batch of
images with their short or their long descriptions, styles taking turns; the decoder learns which one to write from
the style token that starts the text (see data.py). Every eval_interval steps the run measures validation loss and
the image gain (how much worse that loss is with the pictures shuffled: 0 for a model that does not look), prints
a few descriptions of validation images so you can watch the model learn, and saves out_dir/ckpt.pt. Every
log_interval steps it prints (and appends to out_dir/train_log.jsonl) the loss, the time a step takes and the MFU:
the share of the hardware's peak FLOP/s that the model's own arithmetic (model.flops_per_image) achieves.

Under torchrun the same script trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs): every process
reads its own share of each global batch (batch_size images per process and micro-step), gradients are averaged
once per step (not per micro-step), and only the first process logs and saves. The loss is normalised by the
target tokens of the whole global batch, and the connector's BatchNorm uses global-batch statistics, so N
processes take exactly the steps one process would take on the union of their batches (a test checks it).
"""
import ctypes
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import data
import pictures
from checkpoint import load_checkpoint, lock_out_dir, save_checkpoint
from cli import UserError, given_flags, parse_flags, pick_device, run_cli
from data import Split, describe
from model import SIZES, NanoVLM, VLMConfig, check_config, config_from, global_sum

DEFAULTS = dict(
    # run
    size='tiny',                 # model preset (model.SIZES) and run settings (RUNS below)
    out_dir='out-tiny',          # where ckpt.pt goes
    data_dir=data.PICTUREBOOK_DIR,  # a dataset folder (data.py, build.py); picture-book is drawn here if it is missing
    init_from='scratch',         # 'scratch' or 'resume' (from out_dir/ckpt.pt)
    styles='short,long',         # which descriptions to train on, taking turns step by step
    style_token=True,            # start each text with its style's token (false: with <|endoftext|>, styles unmarked)
    eval_interval=500,           # steps between validation, samples and a checkpoint
    eval_iters=10,               # batches per split and style to estimate a loss
    log_interval=25,             # steps between progress lines
    n_samples=3,                 # validation images described at each evaluation, printed beside the truth
    sheet=8,                     # validation images on the sample sheet drawn at each evaluation (0: none)
    # optimisation (the paper: learning rate 1e-3; it states no other setting)
    batch_size=32,               # images per micro-step
    grad_accum=1,                # micro-steps per optimiser step
    max_iters=2000,              # optimiser steps
    learning_rate=3e-3,          # peak learning rate
    enc_lr_scale=1.0,            # the encoder's weight matrices' learning rate as a share of the rest's (wide: less)
    min_lr=1e-4,                 # learning rate at the end of the cosine
    warmup_iters=100,            # linear warm-up steps
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
RUNS = {  # what --size sets besides the model: the paper's sizes are runs for one GPU (the paper: lr 1e-3, no batch)
    'tiny': {k: DEFAULTS[k] for k in ('out_dir', 'batch_size', 'max_iters', 'learning_rate', 'eval_interval')},  # the defaults
    # mini at tiny's lr and batch, for a CPU, its 400-wide encoder's matrices at a tenth (README, "The paper's sizes")
    'mini': dict(out_dir='out-mini', batch_size=32, max_iters=20000, learning_rate=3e-3, enc_lr_scale=0.1,
                 eval_interval=1000),
    # base and large: the same rates for their wider encoders (a probe, not a run: README), a larger batch for a GPU
    'base': dict(out_dir='out-base', batch_size=64, max_iters=20000, learning_rate=3e-3, enc_lr_scale=0.1,
                 eval_interval=1000),
    'large': dict(out_dir='out-large', batch_size=64, max_iters=20000, learning_rate=3e-3, enc_lr_scale=0.1,
                  eval_interval=1000),
}
PRESETS = {name: {**SIZES[name], **RUNS[name]} for name in SIZES}
MINIMUM = {'batch_size': 1, 'grad_accum': 1, 'max_iters': 1, 'eval_interval': 1, 'eval_iters': 1, 'log_interval': 1,
           'n_samples': 0, 'sheet': 0, 'warmup_iters': 0}  # flags whose smaller values cannot work


# -----------------------------------------------------------------------------
# Precision, CPU memory, and MFU (the model's FLOPs per second as a share of the hardware's peak)

def precision(device, dtype):
    """(dtype, autocast context) for --dtype: 'auto' is bfloat16 autocast on a GPU that has it, else float32.
    On CUDA, float32 matmuls may use TF32 tensor cores as well."""
    if dtype not in ('auto', 'float32', 'bfloat16'):
        raise UserError(f'--dtype={dtype}: use auto, float32 or bfloat16')
    if dtype == 'auto':
        dtype = 'bfloat16' if device.type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return dtype, nullcontext() if dtype == 'float32' else torch.autocast(device.type, dtype=torch.bfloat16)


def keep_freed_memory(device):
    """On a CPU with glibc (Linux), keep the memory of freed tensors in the process instead of giving it back to the
    kernel. A training step frees and allocates the same large activations every step; given back, each comes back
    as fresh pages that the kernel must hand over and zero one fault at a time. On our 2-core machine that was a
    fifth of a mini step's CPU time (README, "Fast on one machine"). The price: memory stays at its peak between
    steps."""
    if device.type != 'cpu':
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:  # macOS, Windows, musl: another allocator, nothing to set
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap, not from fresh mappings
    libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD: never hand the top of the heap back


GPU_PEAK_BF16 = {  # dense bf16 tensor-core FLOP/s, by a part of the name torch.cuda.get_device_name() gives
    'H100 PCIe': 756e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12,
    'A10': 125e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12,
}


def peak_flops(device, dtype, given=0.0):
    """(FLOP/s, where that figure comes from): --peak_flops if given, a known GPU's bf16 peak, or on a CPU (and
    an unknown GPU) the best of a few 1024 x 1024 matmuls in the training dtype, measured once at start-up."""
    if given:
        return given, 'given by --peak_flops'
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        for part, flops in GPU_PEAK_BF16.items():
            if part in name:
                return flops, f'{name} bf16 peak'
    n, dtype = 1024, getattr(torch, dtype)
    g = torch.Generator(device).manual_seed(0)  # its own: the run's random state stays the run's (exact resume)
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=g) for _ in range(2))
    best = 0.0
    for _ in range(6):  # the first round warms up
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == 'cuda':
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best, f'measured: {n}x{n} {dtype} matmul on {device}'.replace('torch.', '')


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


def show_samples(model, tokenizer, split, c, scenes, step, ctx):
    """Greedy short descriptions of the first validation images: n_samples printed beside the truth, and a sample
    sheet of the first `sheet` (with every false fact marked, where the scenes are known) in out_dir/samples/, one
    per evaluation, so that flipping through them shows the model learning to look."""
    n = max(c.n_samples, c.sheet)
    if not n:
        return
    model.eval()
    with ctx:
        texts = describe(model, tokenizer, split.images[:n], 'short' if split.style_token else None, temperature=0)
    model.train()
    for i, text in enumerate(texts[:c.n_samples]):
        print(f'  truth: {tokenizer.decode(split.tokens[i, 0, 1:].tolist())}\n  model: {text}')
    if c.sheet:
        os.makedirs(os.path.join(c.out_dir, 'samples'), exist_ok=True)
        path = os.path.join(c.out_dir, 'samples', f'step-{step:06d}.png')
        counts = [n for n in pictures.sample_sheet(split.images[:c.sheet], texts[:c.sheet], path, scenes=scenes,
                                                   title=f'Step {step}, greedy short descriptions.') if n]
        true, stated = sum(t for t, _ in counts), sum(s for _, s in counts)
        print(f'  sample sheet {path}' + (f': {true} of the {stated} facts stated are true' if counts else ''))


# -----------------------------------------------------------------------------
# One optimiser step, as train() takes it and bench.py times it

def train_step(run_model, model, optimizer, styles, step, c, ctx, world, get_batch):
    """c.grad_accum micro-steps, each on get_batch(style) -> (images, x, y), styles taking turns; then clipping and
    AdamW. run_model is the model as it runs (compiled, wrapped in DDP or neither), model the module underneath.
    Returns the last micro-step's loss over the global batch (a tensor), its style and the FLOPs of this process."""
    ddp, flops = isinstance(run_model, DistributedDataParallel), 0
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
        flops += len(images) * model.flops_per_image(x.size(1))
    if c.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return global_sum(loss.detach() * targets) / total, style, flops


# -----------------------------------------------------------------------------

# -----------------------------------------------------------------------------
# A run's home is its out_dir: one run at a time, never a trained model silently replaced, and a resumed run
# that takes exactly the steps the interrupted one would have taken.

CHANGEABLE_ON_RESUME = ('max_iters', 'eval_interval', 'eval_iters', 'log_interval', 'n_samples', 'sheet', 'device', 'dtype',
                        'compile', 'peak_flops')  # flags that may differ from the checkpoint's: they change no step


def resume_settings(c, saved, given):
    """Take the run's settings from the checkpoint (saved); a flag given on the command line that contradicts them
    is refused, except those in CHANGEABLE_ON_RESUME (more steps, another device, other logging)."""
    for key, value in saved.items():
        if key in ('init_from', 'out_dir') or key in CHANGEABLE_ON_RESUME and key in given or not hasattr(c, key):
            continue
        if key in given and getattr(c, key) != value:
            raise UserError(f'--{key}={getattr(c, key)} contradicts the checkpoint in {c.out_dir}, trained with '
                            f'--{key}={value}; leave it out to resume, or train a new model into another --out_dir')
        setattr(c, key, value)


def resume_state(rng, ddp, interval):
    """What a resumed run needs to go on exactly as this one would: every random state it draws from, the batch
    sampler's (the same in every process, which all draw the same global batch) and torch's (dropout: each process
    its own, gathered to the first process for saving), and the losses of the steps since the last log line."""
    mine = {'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    every = [None] * dist.get_world_size() if ddp else [mine]
    if ddp:
        dist.all_gather_object(every, mine)
    return {'batches': rng.bit_generator.state, 'processes': every,
            'interval': {style: [loss.item() for loss in losses] for style, losses in interval.items()}}


def restore_state(rng, state, rank, device):
    """Set the random states saved by resume_state; returns the losses since the last log line."""
    rng.bit_generator.state = state['batches']
    mine = state['processes'][rank]
    torch.set_rng_state(mine['torch'])
    if mine['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine['cuda'])
    return {style: [torch.tensor(loss, device=device) for loss in losses] for style, losses in state['interval'].items()}


def keep_log_until(log_path, step):
    """Drop the log lines of steps after the checkpoint's: the resumed run writes them again, exactly."""
    if os.path.exists(log_path):
        data.write_jsonl(log_path, [r for r in data.read_log(log_path) if r['step'] <= step])


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

    def agreed(self, ddp):
        """Whether to stop now; under DDP every process stops at the same step, when any was asked."""
        return bool(global_sum(torch.tensor([float(self.asked)])) > 0) if ddp else self.asked

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# -----------------------------------------------------------------------------

def train(c, given=()):
    """Train with the settings c (a namespace of DEFAULTS); given: the flags set on the command line, which on
    resume must agree with the checkpoint."""
    styles = [s for s in c.styles.split(',') if s]
    if not styles or any(s not in data.STYLES for s in styles):
        raise UserError(f'--styles={c.styles}: give short, long or short,long')
    if c.init_from not in ('scratch', 'resume'):
        raise UserError(f"--init_from={c.init_from}: use 'scratch' or 'resume'")
    check_config(config_from({**vars(c), 'vocab_size': 1}))  # before any time is spent on data
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
    master = rank == 0
    log = print if master else lambda *args, **kwargs: None  # one process speaks for all
    os.makedirs(c.out_dir, exist_ok=True)
    ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    log_path = os.path.join(c.out_dir, 'train_log.jsonl')
    lock = lock_out_dir(c.out_dir) if master else None  # held until this process ends

    ckpt = load_checkpoint(ckpt_path) if c.init_from == 'resume' else None
    resumed = ckpt is not None
    if resumed:
        resume_settings(c, ckpt['config'], set(given))
    elif os.path.exists(ckpt_path):
        raise UserError(f"{c.out_dir} already holds a trained model (ckpt.pt, step {load_checkpoint(ckpt_path)['step']}): "
                        f'carry on training it with --init_from=resume, or train a new one into another --out_dir '
                        f'(delete {c.out_dir} to start over)')
    elif master and os.path.exists(log_path):  # an earlier run that saved no checkpoint: keep its log aside
        os.replace(log_path, log_path + '.old')
        print(f'kept the log of an earlier run that saved no checkpoint as {log_path}.old')
    dtype, ctx = precision(device, c.dtype)
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    if master:  # the others wait, then find the dataset drawn and prepared
        tokenizer = data.ensure_dataset(c.data_dir, c.img_size)
    if ddp:
        dist.barrier()
    if not master:
        tokenizer = data.ensure_dataset(c.data_dir, c.img_size)
    splits = {name: Split(c.data_dir, name, c.img_size, c.style_token) for name in ('train', 'val')}
    val_scenes = [r.get('scene') for r in data.read_jsonl(os.path.join(c.data_dir, 'val.jsonl'))[:c.sheet]]
    longest = max(s.tokens.shape[2] for s in splits.values())
    if not resumed:
        c.block_size = max(c.block_size, longest)
    config = config_from({**vars(c), 'vocab_size': len(tokenizer)})
    model = NanoVLM(config).to(device)
    optimizer = model.configure_optimizer(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), device.type,
                                          c.enc_lr_scale)
    step, best_val_loss = 0, float('inf')
    interval = {}  # style -> the losses of its steps since the last progress line
    if resumed:
        if ckpt['tokenizer'] != tokenizer.state():
            raise UserError(f'{c.data_dir} has a different vocabulary from the checkpoint; resume on the same data')
        model.load_state_dict(ckpt['model'])
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
        except ValueError as e:  # the optimiser's parameter groups differ: saved by another version of this code
            raise UserError(f'{ckpt_path} was saved by a train.py that grouped the parameters differently ({e}); '
                            f'resume it with that version, or train a new model into another --out_dir') from None
        step, best_val_loss = ckpt['step'], ckpt['best_val_loss']
        if ckpt.get('resume'):
            interval = restore_state(rng, ckpt['resume'], rank, device)
        else:  # a checkpoint from before random states were saved: fresh batches, not a replay of the first ones
            rng = np.random.default_rng([c.seed, step])
        if master:
            keep_log_until(log_path, step)
        log(f'resuming from {ckpt_path} at step {step}')
        del ckpt
    counts = model.param_counts()
    log(f"NanoVLM: {counts['total'] / 1e6:.2f}M parameters (encoder {counts['encoder'] / 1e6:.2f}M, connector "
        f"{counts['connector'] / 1e6:.2f}M, decoder {counts['decoder'] / 1e6:.2f}M), vocabulary {len(tokenizer)}, "
        f"{model.n_prefix} visual tokens, on {device} in {dtype}" + (f', {world} processes' if ddp else ''))
    eval_model = torch.compile(model) if c.compile else model
    run_model = DistributedDataParallel(eval_model, device_ids=[device.index] if device.type == 'cuda' else None) \
        if ddp else eval_model
    peak = None  # only the first process measures it and logs
    if master:
        peak, peak_source = peak_flops(device, dtype, c.peak_flops)
        print(f'MFU is a share of {peak / 1e12:.3g} TFLOP/s ({peak_source})')

    def write_log(entry):  # on disk at once; a full disk stops the run in one line, the checkpoint kept
        data.append_jsonl(log_path, [entry], kept=f'{log_path} up to step {step} and the last checkpoint')

    def calibrate():  # every process calibrates: the BatchNorm sums over them
        calib_rng = np.random.default_rng(0)
        model.calibrate(splits['train'].batch('short', c.batch_size, calib_rng, device)[0] for _ in range(20))

    def save():  # every process hands over its random state; the first one saves
        state = resume_state(rng, ddp, interval)
        if master:
            save_checkpoint(ckpt_path, model, optimizer, tokenizer, step, best_val_loss, vars(c), state)

    stop = StopRequest()
    t0 = time.time()
    t_start, step_start, flops = t0, step, 0
    try:
        while True:
            last = step >= c.max_iters
            if stop.agreed(ddp):
                calibrate()
                save()
                if ddp:
                    dist.barrier()  # the first process is saving: nobody leaves (and is torn down) before it is done
                log(f'interrupted at step {step}: saved {ckpt_path}; go on with '
                    f'python train.py --init_from=resume --out_dir={c.out_dir}')
                raise KeyboardInterrupt
            if (step % c.eval_interval == 0 or last) and not (resumed and step == step_start):  # that one is logged
                t_eval = time.time()
                calibrate()
                if master:
                    losses = estimate_loss(eval_model, splits, styles, c, device, ctx)
                    print(f'step {step}: ' + ', '.join(f'{k} {v:.3f}' for k, v in losses.items()))
                    write_log({'step': step, 'eval': losses})
                    show_samples(model, tokenizer, splits['val'], c, val_scenes, step, ctx)
                    pictures.loss_curves(log_path, os.path.join(c.out_dir, 'loss.png'))
                    best_val_loss = min(best_val_loss, float(np.mean([v for k, v in losses.items() if k.startswith('val')])))
                if step > step_start or last:
                    save()
                t0 += time.time() - t_eval  # evaluation is not training time
            if last:
                break
            lr = learning_rate(step, c)
            for group in optimizer.param_groups:
                group['lr'] = lr * group.get('lr_scale', 1.0)  # checkpoints before enc_lr_scale have none
            loss, style, step_flops = train_step(run_model, model, optimizer, styles, step, c, ctx, world,
                                                 lambda style: splits['train'].batch(style, c.batch_size, rng, device, rank, world))
            interval.setdefault(style, []).append(loss)  # tensors: no wait for the device until the line is due
            flops += step_flops
            step += 1
            if step % c.log_interval == 0:
                means = {s: torch.stack(interval[s]).mean().item() for s in styles if s in interval}
                t1 = time.time()
                ms = (t1 - t0) * 1000 / c.log_interval
                mfu = flops / (t1 - t0) / peak if peak else None
                eta = (t1 - t_start) / (step - step_start) * (c.max_iters - step)
                log(f'step {step}/{c.max_iters} | loss ' + ', '.join(f'{s} {v:.3f}' for s, v in means.items())
                    + f' | lr {lr:.2e} | {ms:.0f} ms/step | ' + (f'mfu {100 * mfu:.0f}% | ' if mfu else '')
                    + f'eta {int(eta // 60)}m{int(eta % 60):02d}s')
                if master:
                    write_log({'step': step, 'train': means, 'lr': lr, 'ms': ms, 'mfu': mfu})
                t0, flops, interval = t1, 0, {}
        if ddp:
            dist.barrier()  # the first process may still be saving: nobody leaves before it is done
        log(f'done: {step} steps in {time.time() - t_start:.0f}s, checkpoint {ckpt_path}')
    finally:  # after an error too (a one-line one, or a full disk), without waiting for processes that may not come
        stop.restore()
        if ddp:
            dist.destroy_process_group()
        if lock:
            lock.close()
    return model


def main(argv):
    c = SimpleNamespace(**parse_flags(DEFAULTS, argv, PRESETS, MINIMUM, __doc__, ['train', 'model']))
    train(c, given_flags(argv, PRESETS))


if __name__ == '__main__':
    run_cli(main)
