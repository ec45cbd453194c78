"""
The NanoVLM: a vision-language model small enough to read in one sitting and to train on a laptop.

An image goes through a small vision transformer (the encoder). A connector maps the encoder's output into the
width of a GPT-style decoder, where it becomes a prefix: visual tokens stand in front of the text tokens and the
decoder, attending causally, writes the text that follows. There is no cross-attention; the picture is just the
beginning of the sequence. The loss is next-token cross-entropy on the text alone. Everything trains from scratch.

    image (B, H, W, 3) uint8
      -> PatchEmbed: two strided convolutions, LayerNorm, ReLU, linear     (B, N, Ce)   N = (H / patch)^2
      -> [CLS] prepended, positions added, pre-LN transformer blocks      (B, 1+N, Ce)
      -> Connector: linear + GELU + BatchNorm, on every token (ours)      (B, P, C)    P = 1+N or 1
                    or on CLS only (the paper), or on 2x2 squares of patches  P = N/4 (merge=2, tiny)
      -> decoder input = [visual prefix ; text embeddings] + positions   (B, P+T, C)
      -> causal pre-LN blocks, LayerNorm, linear head over the vocabulary (B, T, V)

Departures from the paper, all but the ReLU measured on the picture-book world (greedy short descriptions of 200
test scenes, grounding precision P and recall R from grade.py; tiny as train.py trains it, 600 steps, unless it
says otherwise; EXERCISES.md has the commands, and its teacher's section these answers):
  - The connector ends in a parameter-free BatchNorm (Connector). Without it the decoder treats the visual tokens
    as a constant prefix and hardly learns to look: P 0.188, R 0.201, against P 0.982, R 0.982 with it.
  - A ReLU between the two patch convolutions (PatchEmbed; the paper does not say), so they are not one linear map.
  - Every preset hands the decoder every patch (visual_tokens='all': CLS and the N patches, or tiny's merged
    squares of them), not the CLS token alone, which stays nearly blind: tiny with CLS alone P 0.261, R 0.268,
    with every patch P 0.982. (mini, 1,000 CPU steps at 224 px: P 0.113, R 0.085 with CLS; P 0.926, R 0.820 with
    every patch, the weight matrices of its 400-wide encoder trained at a tenth of the learning rate, which
    train.py's presets do; P 0.343, R 0.085 at the full rate.) --visual_tokens=cls gives the paper's design
    (README: "The paper's sizes").
  - tiny merges each 2x2 square of patch tokens into one visual token (merge=2, as HF nanoVLM's pixel shuffle):
    16 visual tokens, not 65, so the decoder's sequences are 49 tokens shorter. With Muon and bf16 (tiny's run), a
    step took 0.73 times as long; the grounding target (P, R >= 0.95 on 100 validation scenes) came at step 850
    instead of 750, 1.2 times sooner in seconds (README, "The speedrun", which measures tiny's whole recipe).
  - One model writes both styles, chosen by a style token at the start of the text; the paper trained one model
    per dataset. Without the token (--style_token=false) grounding holds (P 0.989, R 0.985) but the model cannot
    be told which style to write: greedy short descriptions run 26.6 words on average, not 22.3.

Reference: Agarwalla et al., "NanoVLMs: How small can we go and still make coherent Vision Language Models?", 2025.

    python model.py --size=base --vocab_size=8192    # parameter table of a preset
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from cli import UserError


@dataclass
class VLMConfig:
    img_size: int = 224          # images are img_size x img_size RGB
    patch_size: int = 16         # each patch_size x patch_size square is one encoder token (multiple of 4)
    enc_layer: int = 1           # encoder transformer blocks
    enc_embd: int = 400          # encoder width (the paper's "image width")
    enc_head: int = 8            # encoder attention heads
    n_layer: int = 4             # decoder transformer blocks
    n_head: int = 8              # decoder attention heads
    n_embd: int = 96             # decoder width (the paper's "text width")
    vocab_size: int = 8192       # rows of the token embedding: the compact vocabulary of data.Tokenizer
    block_size: int = 128        # longest text in tokens, style and end-of-text tokens included
    visual_tokens: str = 'cls'   # 'cls': the paper's single summary token; 'all': CLS and every patch (LLaVA-style)
    merge: int = 1               # with 'all': each merge x merge square of patches becomes one visual token (no CLS)
    connector_norm: bool = True  # end the connector with a BatchNorm (ours, see Connector; false: the paper's connector)
    dropout: float = 0.1         # dropout in every block (the paper: 0.1 for every size)


# Presets: the paper's Table 1 (mini, base, large; 224 px, 16 px patches, dropout 0.1) and ours for a CPU.
# 'tiny' sees 64 px pictures in 8 px patches and hands all of them to the decoder, merged 2x2 into 16 visual tokens:
# it learns to name what is where far faster than through the single CLS token (README, "The paper's sizes, ...").
SIZES = {
    'tiny': dict(img_size=64, patch_size=8, enc_layer=2, enc_embd=128, enc_head=4, n_layer=4, n_head=4, n_embd=128,
                 visual_tokens='all', merge=2, dropout=0.0),
    'mini': dict(img_size=224, patch_size=16, enc_layer=1, enc_embd=400, enc_head=8, n_layer=4, n_head=8, n_embd=96,
                 visual_tokens='all', dropout=0.1),
    'base': dict(img_size=224, patch_size=16, enc_layer=3, enc_embd=512, enc_head=8, n_layer=8, n_head=8, n_embd=128,
                 visual_tokens='all', dropout=0.1),
    'large': dict(img_size=224, patch_size=16, enc_layer=5, enc_embd=512, enc_head=16, n_layer=10, n_head=16,
                  n_embd=192, visual_tokens='all', dropout=0.1),
}


def check_config(c):
    """A config the model cannot be built from is a UserError that says why."""
    if c.visual_tokens not in ('cls', 'all'):
        raise UserError(f"visual_tokens must be 'cls' or 'all', not {c.visual_tokens!r}")
    if c.patch_size % 4 or c.patch_size <= 0 or c.img_size % c.patch_size:
        raise UserError(f'patch_size {c.patch_size} must be a multiple of 4 that divides img_size {c.img_size}')
    if c.merge < 1 or (c.img_size // c.patch_size) % c.merge:  # (with visual_tokens='cls' there is nothing to merge)
        raise UserError(f'merge {c.merge} must divide the {c.img_size // c.patch_size} patches a side')
    for width, heads, part in ((c.enc_embd, c.enc_head, 'enc'), (c.n_embd, c.n_head, 'n')):
        if heads <= 0 or width % heads:
            raise UserError(f'{part}_embd {width} does not split into {heads} heads ({part}_head)')
    for name in ('enc_layer', 'n_layer', 'vocab_size', 'block_size'):
        if getattr(c, name) <= 0:
            raise UserError(f'{name} must be positive')
    if not 0 <= c.dropout < 1:
        raise UserError('dropout must be in [0, 1)')


# -----------------------------------------------------------------------------
# The transformer block, shared by encoder (bidirectional) and decoder (causal, with a KV cache for generation)

class SelfAttention(nn.Module):
    """Multi-head self-attention. Set keep_weights to True (pictures.py does, for one pass) and the attention is
    computed the long way, softmax(q k^T / sqrt(hs) + mask) @ v, and its weights are kept in self.weights
    (B, nh, Tq, Tk) so that they can be looked at; otherwise the fused kernel runs and no weights exist."""

    def __init__(self, n_embd, n_head, dropout, causal):
        super().__init__()
        self.n_head, self.causal, self.dropout = n_head, causal, dropout
        self.keep_weights, self.weights = False, None
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:  # generation: keep every key and value so far, attend over all of them
            if 'k' in cache:
                assert T == 1, 'after the first call the cache takes one token at a time'
                k, v = torch.cat([cache['k'], k], dim=2), torch.cat([cache['v'], v], dim=2)
            cache['k'], cache['v'] = k, v
        causal = self.causal and q.size(2) == k.size(2)  # a single new query may see every cached key
        # Written out, the weights exist to be kept; and on a CPU in bfloat16 this is 3-6x faster than PyTorch's
        # fused kernel, forward and backward, for tiny's sequences (README, "The speedrun": ideas that did not help)
        if self.keep_weights or q.device.type == 'cpu' and q.dtype == torch.bfloat16:
            att = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, Tk)
            if causal:
                att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float('-inf'))
            weights = F.softmax(att.float(), dim=-1)
            self.weights = weights if self.keep_weights else None
            y = F.dropout(weights.to(v.dtype), self.dropout, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd, n_head, dropout, causal):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, dropout, causal)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


# -----------------------------------------------------------------------------
# The visual encoder: a small ViT

class PatchEmbed(nn.Module):
    """Cut the image into patches with two strided convolutions (patch/4 then 4 pixels a side), then LayerNorm,
    ReLU and a linear layer to the encoder width. A ReLU between the convolutions keeps them from collapsing into
    one linear map (the paper does not say; it costs no parameters)."""

    def __init__(self, cfg):
        super().__init__()
        k1, C = cfg.patch_size // 4, cfg.enc_embd
        self.conv1 = nn.Conv2d(3, C // 2, kernel_size=k1, stride=k1)
        self.conv2 = nn.Conv2d(C // 2, C, kernel_size=4, stride=4)
        self.ln = nn.LayerNorm(C)
        self.fc = nn.Linear(C, C)

    def forward(self, pixels):  # (B, 3, H, W)
        x = self.conv2(F.relu(self.conv1(pixels)))  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return self.fc(F.relu(self.ln(x)))


class VisionEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.enc_embd))
        self.pos = nn.Parameter(torch.zeros(1, 1 + n_patches, cfg.enc_embd))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.enc_embd, cfg.enc_head, cfg.dropout, causal=False) for _ in range(cfg.enc_layer))
        self.ln_f = nn.LayerNorm(cfg.enc_embd)

    def forward(self, pixels):
        x = self.patch_embed(pixels)  # (B, N, Ce)
        x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1)  # (B, 1+N, Ce)
        x = self.drop(x + self.pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


class BatchNorm(nn.Module):
    """Standardise each feature over every token of the batch, without learned parameters, as
    nn.BatchNorm1d(affine=False) does, except that under DDP the statistics are those of the whole global batch
    (summed over the processes, gradients included), so N processes train exactly as one process would on the
    union of their batches. Running statistics serve evaluation; momentum None makes them a plain cumulative mean."""

    def __init__(self, n_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.register_buffer('running_mean', torch.zeros(n_features))
        self.register_buffer('running_var', torch.ones(n_features))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self):
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def forward(self, x):  # (B, P, C)
        if not self.training:
            return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps)
        flat = x.reshape(-1, x.size(-1)).float()  # (B*P, C)
        n = global_sum(flat.new_tensor([flat.size(0)]))
        mean = global_sum(flat.sum(0)) / n
        var = global_sum(((flat - mean) ** 2).sum(0)) / n  # two passes: exact even on top of a large constant
        with torch.no_grad():
            self.num_batches_tracked += 1
            weight = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean, weight)
            self.running_var.lerp_(var * n / (n - 1), weight)  # unbiased, as nn.BatchNorm1d keeps it
        return ((flat - mean) * torch.rsqrt(var + self.eps)).view_as(x).to(x.dtype)


def global_sum(t):
    """t summed over all DDP processes, with gradients flowing back to each (just t outside DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return _AllReduceSum.apply(t)
    return t


class _AllReduceSum(torch.autograd.Function):
    """A sum over processes; its gradient is the sum over processes of the gradients that reach it."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class Connector(nn.Module):
    """Linear + GELU from the encoder's width to the decoder's (the paper), then a BatchNorm without parameters.
    Why the BatchNorm: trained from scratch, the decoder learns language long before the encoder learns to see,
    and meanwhile it grows the visual tokens into a large constant (a handy fixed prefix). Every LayerNorm in the
    decoder then divides the small image-dependent part by that constant, and the model never learns to look
    (measured: tiny models that described every picture alike). Standardising each feature over the batch removes
    the constant, so what reaches the decoder is exactly how this image differs from others."""

    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.enc_embd * (cfg.merge ** 2 if cfg.visual_tokens == 'all' else 1), cfg.n_embd)
        self.norm = BatchNorm(cfg.n_embd) if cfg.connector_norm else nn.Identity()

    def forward(self, x):  # (B, P, Ce), or (B, P, merge^2 Ce) for merged tokens
        return self.norm(F.gelu(self.fc(x)))  # (B, P, C), statistics over batch and tokens, per feature


# -----------------------------------------------------------------------------
# The whole model: encoder, connector, decoder

class NanoVLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        check_config(config)
        self.config = cfg = config
        n_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.n_prefix = 1 if cfg.visual_tokens == 'cls' else n_patches // cfg.merge ** 2 if cfg.merge > 1 else 1 + n_patches
        self.encoder = VisionEncoder(cfg)
        self.connector = Connector(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(self.n_prefix + cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = nn.ModuleList(Block(cfg.n_embd, cfg.n_head, cfg.dropout, causal=True) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2: one table to read tokens and to write them
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled down with depth
            if name.endswith('proj.weight'):
                n = cfg.n_layer if name.startswith('decoder') else cfg.enc_layer
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n))
        nn.init.normal_(self.encoder.pos, std=0.02)
        nn.init.normal_(self.encoder.cls, std=0.02)

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, 'bias', None) is not None:
                nn.init.zeros_(m.bias)

    def visual_prefix(self, images):
        """uint8 images (B, H, W, 3) -> visual tokens in the decoder's width (B, P, C). Pixels are scaled to [-1, 1]
        here, on whatever device the images are, so data can travel as uint8 (4x less to copy)."""
        pixels = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        x = self.encoder(pixels)  # (B, 1+N, Ce)
        if self.config.visual_tokens == 'cls':
            x = x[:, :1]  # (B, 1, Ce): the CLS token summarises the image
        elif self.config.merge > 1:  # each k x k square of patches side by side in one token, as HF nanoVLM does
            B, Ce, k = x.size(0), x.size(2), self.config.merge
            g = self.config.img_size // self.config.patch_size  # patches a side
            x = x[:, 1:].reshape(B, g // k, k, g // k, k, Ce).transpose(2, 3)  # (B, g/k, g/k, k, k, Ce)
            x = x.reshape(B, (g // k) ** 2, k * k * Ce)  # (B, N/k^2, k^2 Ce)
        return self.connector(x)  # (B, P, C)

    def decode(self, prefix, idx, caches=None, start=0):
        """Run the decoder over [prefix ; embeddings of idx] at positions start.. and return the final hidden states
        of the text positions (B, T, C). prefix may be None when continuing from a KV cache."""
        x = self.wte(idx)  # (B, T, C)
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)  # (B, P+T, C)
        pos = torch.arange(start, start + x.size(1), device=idx.device)
        x = self.drop(x + self.wpe(pos))
        for i, block in enumerate(self.decoder):
            x = block(x, None if caches is None else caches[i])
        return self.ln_f(x[:, x.size(1) - idx.size(1):])

    def forward(self, images, idx, targets=None):
        """images (B, H, W, 3) uint8; idx (B, T) token ids starting with a style token; targets (B, T) the next
        token at each position, -1 where there is none (padding). Returns logits (B, T, V) and the mean loss."""
        if idx.size(1) > self.config.block_size:
            raise ValueError(f'text of {idx.size(1)} tokens is longer than block_size {self.config.block_size}')
        logits = self.lm_head(self.decode(self.visual_prefix(images), idx))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, images, idx, max_new_tokens, temperature=1.0, top_k=None, eot=None, use_cache=True,
                 on_token=None):
        """Continue idx (B, T0), a style token and an optional beginning of the same length in every row, for up
        to max_new_tokens; temperature 0 is greedy. A row that writes eot stops (eot fills the rest); all stopped,
        it ends. on_token, if given, gets each step's tokens (B,) (serve.py; raising stops it). Returns new (B, n)."""
        max_new_tokens = min(max_new_tokens, self.config.block_size - idx.size(1))
        prefix = self.visual_prefix(images)
        caches = [{} for _ in self.decoder] if use_cache else None
        done, new = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device), []  # rows ended, tokens (B,) a step
        h = self.decode(prefix, idx, caches)  # prefill: prefix and beginning in one pass
        for step in range(max_new_tokens):
            logits = self.lm_head(h[:, -1]).float()  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -float('inf'))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1).squeeze(1)
            if eot is not None:
                nxt = nxt.masked_fill(done, eot)
                done = done | (nxt == eot)
            new.append(nxt)
            if on_token is not None:
                on_token(nxt)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if use_cache:  # one new token, attending to everything cached
                h = self.decode(None, nxt[:, None], caches, start=prefix.size(1) + idx.size(1) - 1)
            else:  # recompute the whole sequence (the visual prefix is reused: only the decoder is the point here)
                h = self.decode(prefix, idx)
        return torch.stack(new, dim=1) if new else idx[:, :0]

    @torch.no_grad()
    def calibrate(self, image_batches):
        """Set the connector's BatchNorm statistics to their exact mean over image_batches (training images).
        The running averages kept during training lag behind an encoder that is still learning fast, and a model
        evaluated with stale statistics writes nonsense; so train.py calls this before every evaluation and save."""
        norm, training = self.connector.norm, self.training
        if not isinstance(norm, BatchNorm):  # --connector_norm=false: nothing to calibrate
            return
        momentum = norm.momentum
        self.eval()
        norm.reset_running_stats()
        norm.momentum, norm.training = None, True  # momentum None: a plain cumulative mean
        for images in image_batches:
            self.visual_prefix(images)
        norm.momentum = momentum
        self.train(training)

    def flops_per_image(self, text_len):
        """Floating-point operations of one training step's forward and backward pass for one image and a text of
        text_len tokens: every matrix multiply counted as 2 FLOPs a multiply-add (convolutions, linear layers,
        attention scores and their weighted sum, full-width as scaled_dot_product_attention computes them, and
        the head), and the backward pass as twice the forward, as in the PaLM paper's MFU."""
        c, N = self.config, (self.config.img_size // self.config.patch_size) ** 2
        k1, Ce, C = c.patch_size // 4, c.enc_embd, c.n_embd
        S = self.n_prefix + text_len  # decoder sequence: visual prefix and text

        def blocks(layers, width, tokens):  # qkv, proj, MLP (12 width^2 weights a token), then attention
            return layers * (2 * 12 * width * width * tokens + 2 * 2 * tokens * tokens * width)
        patch = 2 * (c.img_size // k1) ** 2 * 3 * k1 * k1 * (Ce // 2) + 2 * N * (Ce // 2) * 16 * Ce + 2 * N * Ce * Ce
        forward = (patch + blocks(c.enc_layer, Ce, 1 + N) + 2 * self.connector.fc.in_features * C * self.n_prefix
                   + blocks(c.n_layer, C, S) + 2 * C * c.vocab_size * text_len)
        return 3 * forward

    def param_counts(self):
        """Parameters of encoder, connector and decoder (the tied embedding counted once, in the decoder)."""
        enc = sum(p.numel() for p in self.encoder.parameters())
        con = sum(p.numel() for p in self.connector.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {'encoder': enc, 'connector': con, 'decoder': total - enc - con, 'total': total}


def config_from(flags):
    """A VLMConfig from any dict that holds its fields (the flags of train.py, a checkpoint's model_args)."""
    return VLMConfig(**{f.name: flags[f.name] for f in fields(VLMConfig) if f.name in flags})


# -----------------------------------------------------------------------------

if __name__ == '__main__':
    from cli import parse_flags, run_cli

    def main(argv):
        defaults = {
            'size': 'mini',  # a preset of SIZES: tiny (ours, for a CPU), mini, base, large (the paper's)
            **asdict(VLMConfig()),
        }
        flags = parse_flags(defaults, argv, SIZES, doc=__doc__, sources=['model'])
        cfg = config_from(flags)
        counts = NanoVLM(cfg).param_counts()
        print(f"NanoVLM {flags['size']}: {cfg}")
        print(f"{'part':<10} {'params':>12} {'share':>7}")
        for part, n in counts.items():
            print(f'{part:<10} {n:>12,} {100 * n / counts["total"]:>6.1f}%')
    run_cli(main)
