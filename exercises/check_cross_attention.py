"""
Check for exercise 19: the decoder reads the picture by cross-attention instead of a prefix.

    python -m pytest -q exercises/check_cross_attention.py

It expects a VLMConfig field connector: 'prefix' (the paper: visual tokens in front of the text, the default) or
'cross' (no prefix: every decoder block has a cross-attention sub-layer, queries from the text, keys and values
from the connector's visual tokens). With 'cross' the model must still give (B, T, V) logits, keep the text
causal, generate the same greedy tokens with the KV cache as without, and learn to use the picture.
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]  # the repository root, and the tests the model's are beside
from model import VLMConfig  # noqa: E402
from test_model import loss_with_own_and_shuffled_pictures, make_model, one_object_pictures  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is fastest, and kind to a busy machine

TINY = dict(img_size=32, patch_size=8, enc_layer=1, enc_embd=32, enc_head=2, n_layer=2, n_head=2, n_embd=32,
            vocab_size=50, block_size=64, visual_tokens='all', dropout=0.0)


def cross_model(seed=0, spread=None, **overrides):
    """A tiny NanoVLM with connector='cross', in eval mode. spread: re-draw every matrix with this std, so that a
    random model's greedy continuation varies from step to step (what the generation check needs)."""
    return make_model(VLMConfig(**{**TINY, 'connector': 'cross', **overrides}), seed, spread)


def batch(B, T, seed=1, img_size=32, vocab_size=50):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, img_size, img_size, 3), dtype=torch.uint8, generator=g)
    return images, torch.randint(1, vocab_size, (B, T), generator=g)


def test_cross_model_gives_logits_of_the_text_alone():
    m = cross_model()
    images, idx = batch(3, 10)
    logits, loss = m(images, idx, idx)
    assert logits.shape == (3, 10, 50)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_no_visual_prefix_in_the_sequence():
    """The decoder's blocks see the text alone: T positions, not P + T, and no position is spent on the picture."""
    m = cross_model()
    assert getattr(m, 'n_prefix', 0) == 0 or m.wpe.num_embeddings == TINY['block_size']
    seen = []
    m.decoder[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    images, idx = batch(2, 7)
    m(images, idx)
    assert seen and seen[0][:2] == (2, 7), f'the first decoder block saw {seen[0]}: is the picture still a prefix?'


def test_the_picture_reaches_the_text_and_the_text_stays_causal():
    m = cross_model(spread=0.3)
    images, idx = batch(2, 8)
    logits, _ = m(images, idx)
    other, _ = m(255 - images, idx)
    assert not torch.allclose(logits[:, 0], other[:, 0], atol=1e-3), 'the picture changes nothing'
    changed = idx.clone()
    changed[:, 4] = (idx[:, 4] % 49) + 1  # a different token at position 4
    later, _ = m(images, changed)
    assert torch.allclose(logits[:, :4], later[:, :4], atol=1e-5), 'a position before 4 saw token 4: not causal'
    assert not torch.allclose(logits[:, 4:], later[:, 4:], atol=1e-3)


@pytest.mark.parametrize('visual_tokens', ['cls', 'all'])
@pytest.mark.parametrize('B, T0', [(1, 1), (3, 4)])
def test_generation_with_and_without_the_kv_cache_agree(visual_tokens, B, T0):
    m = cross_model(seed=0, spread=0.5, visual_tokens=visual_tokens)
    images, idx = batch(B, T0, seed=B + T0)
    cached = m.generate(images, idx, 25, temperature=0, use_cache=True)
    uncached = m.generate(images, idx, 25, temperature=0, use_cache=False)
    assert cached.shape == uncached.shape == (B, 25)
    assert torch.equal(cached, uncached)
    assert all(len(set(row)) > 1 for row in cached.tolist())  # a real check: not one token repeated


def test_it_learns_to_use_the_picture():
    """After 40 steps on 32 one-object pictures the loss with each text's own picture is well below the loss with
    the pictures shuffled: the decoder reads what it is told by cross-attention (measured: 0.9 against 1.7)."""
    images, tokens, vocab_size = one_object_pictures(32, size=32)
    own, shuffled = loss_with_own_and_shuffled_pictures(cross_model(vocab_size=vocab_size, block_size=8), images, tokens)
    assert own < shuffled - 0.3, f'loss {own:.3f} with the pictures, {shuffled:.3f} shuffled'


def test_flop_count_is_what_pytorch_counts():
    """Optional: flops_per_image may say NotImplementedError for the cross-attention model; if it counts, it counts
    what PyTorch counts (as tests/test_model.py checks for the prefix model)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    m = cross_model()
    images, idx = batch(2, 9)
    try:
        expected = m.flops_per_image(9)
    except NotImplementedError:
        pytest.skip('flops_per_image is not implemented for connector=cross')
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = m(images, idx, idx)
    assert expected == 3 * counter.get_total_flops() // 2
