"""
How fast is it here? Times training, the wait for data, and generation for a preset, and prints one table.

    python bench.py                                   # tiny, on this machine's CPU
    python bench.py --size=mini
    python bench.py --size=base --device=cuda --compile

Training: `warmup` untimed optimiser steps, then `steps` timed ones on the real prepared data, each split into the
wait for its batch (slicing the memory-mapped arrays and copying to the device) and the step itself (train.py's own
train_step: forward, backward, clipping, the optimiser). The table shows medians. MFU is the model's FLOPs per step
(model.flops_per_image) over the step's time, as a share of the peak (machine.peak_flops: on a CPU, the best
1024x1024 matmul in the same dtype, measured at start-up).

Generation: descriptions per second for `gen_images` images at once, greedy, with the KV cache and without it, in
both styles, each as long as the median training text of its style (end-of-text is ignored, so every run writes
the same number of tokens). With and without the cache must write the same tokens.

The flags of train.py that shape a step work here too (--size, the model's fields, --data_dir, --batch_size,
--grad_accum, the optimiser's, --device, --dtype, --compile, ...); those about a whole run (its length, schedule,
evaluation and checkpoints) do not apply and are refused as unknown. `python bench.py --help` lists them.
"""
import time
from types import SimpleNamespace

import numpy as np
import torch

import data
import train
from machine import keep_freed_memory, peak_flops, precision
from cli import UserError, parse_flags, pick_device, run_cli
from data import Split
from model import NanoVLM, config_from
from optim import configure_optimizer

RUN_ONLY = ('out_dir', 'init_from', 'max_iters', 'min_lr', 'warmup_iters', 'eval_interval', 'eval_iters', 'log_interval',
            'n_samples', 'sheet', 'eval_scenes', 'target_grounding')  # train.py's flags about a whole run: no use here
DEFAULTS = dict(
    {k: v for k, v in train.DEFAULTS.items() if k not in RUN_ONLY},
    steps=20,        # timed training steps
    warmup=5,        # untimed steps first (allocation, caches, torch.compile)
    gen_images=32,   # images described at once when timing generation
)
MINIMUM = {**{k: v for k, v in train.MINIMUM.items() if k in DEFAULTS}, 'steps': 1, 'warmup': 0, 'gen_images': 1}


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def bench_training(model, splits, c, device, dtype, ctx, peak):
    """Median milliseconds waiting for a batch and taking a step, the FLOPs of a step, and the median MFU."""
    run_model = torch.compile(model) if c.compile else model
    optimizer = configure_optimizer(model, c.weight_decay, c.learning_rate, (c.beta1, c.beta2), device.type,
                                    c.enc_lr_scale, c.muon_lr, dtype)
    rng = np.random.default_rng(c.seed)
    styles = [s for s in c.styles.split(',') if s]
    waits, steps, flops = [], [], []

    def timed_batch(style):
        t = time.perf_counter()
        batch = splits['train'].batch(style, c.batch_size, rng, device)
        sync(device)
        waits.append(time.perf_counter() - t)
        return batch

    for step in range(c.warmup + c.steps):
        sync(device)
        t = time.perf_counter()
        n_waits = len(waits)
        _, step_flops = train.train_step(run_model, model, optimizer, styles, step, c, ctx, 1, timed_batch)
        sync(device)
        if step >= c.warmup:
            steps.append(time.perf_counter() - t - sum(waits[n_waits:]))  # the step without its own waits
            flops.append(step_flops)
        else:
            del waits[n_waits:]
    wait = float(np.median([sum(waits[i * c.grad_accum:(i + 1) * c.grad_accum]) for i in range(c.steps)]))
    step = float(np.median(steps))
    mfu = float(np.median(np.array(flops) / np.array(steps))) / peak
    return {'wait_ms': 1e3 * wait, 'step_ms': 1e3 * step, 'flops': float(np.median(flops)), 'mfu': mfu}


@torch.no_grad()
def bench_generation(model, images, style, new_tokens, ctx, device):
    """Descriptions per second with and without the KV cache, and whether both wrote the same tokens."""
    idx = torch.full((len(images), 1), data.STYLE_TOKEN[style], dtype=torch.long, device=device)
    out, rate = {}, {}
    for use_cache in (True, False):
        model.generate(images[:2], idx[:2], 4, temperature=0, use_cache=use_cache)  # warm-up
        sync(device)
        t = time.perf_counter()
        with ctx:
            out[use_cache] = model.generate(images, idx, new_tokens, temperature=0, use_cache=use_cache)
        sync(device)
        rate[use_cache] = len(images) / (time.perf_counter() - t)
    return rate[True], rate[False], torch.equal(out[True], out[False])


def main(argv):
    for arg in argv:
        if arg.lstrip('-').split('=')[0] in RUN_ONLY:
            raise UserError(f'{arg.split("=")[0]} is a train.py flag about a whole run; bench.py times --steps steps')
    c = SimpleNamespace(**parse_flags(DEFAULTS, argv, train.PRESETS, MINIMUM, __doc__, ['bench', 'train', 'model']))
    device = pick_device(c.device)
    keep_freed_memory(device)
    dtype, ctx = precision(device, c.dtype)
    torch.manual_seed(c.seed)
    tokenizer = data.ensure_dataset(c.data_dir, c.img_size)
    splits = {'train': Split(c.data_dir, 'train', c.img_size)}
    c.block_size = max(c.block_size, splits['train'].tokens.shape[2])
    model = NanoVLM(config_from({**vars(c), 'vocab_size': len(tokenizer)})).to(device)
    peak, peak_source = peak_flops(device, dtype, c.peak_flops)

    t = bench_training(model, splits, c, device, dtype, ctx, peak)
    model.eval()
    images = torch.from_numpy(np.array(splits['train'].images[:c.gen_images])).to(device)  # a copy: the memmap is read-only
    lengths = (splits['train'].tokens != data.PAD).sum(2)  # (N, 2): style token + text + end-of-text
    rows = []
    for s, style in enumerate(data.STYLES):
        n = int(np.median(lengths[:, s][lengths[:, s] > 0])) - 1
        cached, uncached, same = bench_generation(model, images, style, n, ctx, device)
        rows.append((style, n, cached, uncached, same))

    threads = f', {torch.get_num_threads()} threads' if device.type == 'cpu' else ''
    print(f'bench: {c.size}, {model.param_counts()["total"] / 1e6:.2f}M parameters, batch {c.batch_size}, on {device} in '
          f'{dtype}{threads}{", compiled" if c.compile else ""}; peak {peak / 1e9:,.0f} GFLOP/s ({peak_source})')
    table = [('training step (median of %d)' % c.steps, f"{t['step_ms']:.1f} ms"),
             ('waiting for data', f"{t['wait_ms']:.2f} ms ({100 * t['wait_ms'] / (t['wait_ms'] + t['step_ms']):.1f}% of a step)"),
             ('model FLOPs per step', f"{t['flops'] / 1e9:.1f} GFLOP"),
             ('MFU', f"{100 * t['mfu']:.0f}%")]
    for style, n, cached, uncached, same in rows:
        table += [(f'{style} descriptions/s, KV cache ({c.gen_images} at once, {n} tokens)', f'{cached:,.1f}'),
                  (f'{style} descriptions/s, no cache', f'{uncached:,.1f}'),
                  (f'{style}: KV cache speed-up, same greedy output', f"{cached / uncached:.1f}x, {'yes' if same else 'NO'}")]
    width = max(len(k) for k, _ in table)
    print(f"| {'measure'.ljust(width)} | value |\n| {'-' * width} | --- |")
    for k, v in table:
        print(f'| {k.ljust(width)} | {v} |')


if __name__ == '__main__':
    run_cli(main)
