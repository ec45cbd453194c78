"""
How the model's parameters learn: AdamW for every parameter (the paper's optimiser), or Muon for the hidden weight
matrices and AdamW for the rest (the NanoGPT speedrun's split, and tiny's: README, "The speedrun").

Muon, in one paragraph: SGD with momentum gives each weight matrix an update G whose few largest singular
directions dominate, so a step mostly pushes the way it already pushes. Muon replaces G = U S V^T by U V^T, the
nearest (semi-)orthogonal matrix, so every direction the gradient names moves by the same amount; five
Newton-Schulz iterations compute it without an SVD (Keller Jordan, 2024: https://kellerjordan.github.io/posts/muon/).
The embeddings, the head, the first layer (the patch embedding) and every vector (biases, norms, positions) are
not hidden matrices: they keep AdamW, as in the speedrun.

train.py's schedule sets each group's 'lr' to the scheduled rate times the group's 'lr_scale', Muon's groups too.
"""
import torch


def configure_optimizer(model, weight_decay, learning_rate, betas, device_type, enc_lr_scale=1.0, muon_lr=0.0,
                        dtype='float32'):
    """AdamW; matrices and embeddings decay (the decoder's position table wpe too), biases, norms and the encoder's
    CLS and positions do not. With enc_lr_scale != 1 the encoder's matrices (weights and convolution kernels) are a
    group of their own, whose 'lr_scale' train.py multiplies the scheduled rate by; its vectors (positions, CLS,
    biases, norms) keep the full rate, as in muP: a step of a matrix moves its output in proportion to the inputs
    it sums (mostly the encoder's width; the first convolution, which sums 3 x k1 x k1 pixels, is scaled with the
    rest, unmeasured), a vector's does not. With muon_lr > 0 the weight matrices of the encoder's and the decoder's
    blocks and the connector's are Muon's instead, at muon_lr (times enc_lr_scale in the encoder), without decay,
    orthogonalized in dtype (the run's: bfloat16 where the machine has it, as the speedrun does, 2.5x faster here).
    AdamW is fused into one kernel on CUDA, and on a CPU where PyTorch has it (2.4 and later: the optimiser's share
    of a tiny step is 2.2 ms instead of 5.5 on our 2 cores)."""
    params = [p for p in model.parameters() if p.requires_grad]
    encoder = {id(p) for p in model.encoder.parameters()}
    hidden = {id(p) for part in [*model.encoder.blocks, *model.decoder, model.connector]
              for p in part.parameters() if p.dim() >= 2} if muon_lr else set()
    matrix = lambda p: p.dim() >= 2 and p is not model.encoder.pos and p is not model.encoder.cls
    slow = lambda p: enc_lr_scale != 1 and id(p) in encoder and matrix(p)
    rest = [p for p in params if id(p) not in hidden]  # AdamW's
    groups = [{'params': [p for p in rest if slow(p)], 'weight_decay': weight_decay, 'lr_scale': enc_lr_scale},
              {'params': [p for p in rest if matrix(p) and not slow(p)], 'weight_decay': weight_decay, 'lr_scale': 1.0},
              {'params': [p for p in rest if not matrix(p)], 'weight_decay': 0.0, 'lr_scale': 1.0}]
    fused = device_type == 'cuda' or device_type == 'cpu' and tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 4)
    adamw = torch.optim.AdamW([g for g in groups if g['params']], lr=learning_rate, betas=betas, fused=fused)
    if not muon_lr:
        return adamw
    scale = muon_lr / learning_rate
    muon = Muon([g for g in [{'params': [p for p in params if id(p) in hidden and id(p) in encoder],
                              'lr_scale': scale * enc_lr_scale},
                             {'params': [p for p in params if id(p) in hidden and id(p) not in encoder],
                              'lr_scale': scale}] if g['params']], lr=muon_lr, dtype=getattr(torch, dtype))
    return Optimizers(muon, adamw)


def orthogonalize(G, steps=5):
    """The nearest semi-orthogonal matrix to each G (..., m, n), roughly: a quintic Newton-Schulz iteration whose
    coefficients pull every singular value towards 1 fast (to within about 0.7-1.2, which is enough)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # every singular value now at most 1
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the smaller Gram matrix X X^T
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum on each matrix's gradient, then orthogonalize, scaled by sqrt(rows / columns) where a
    matrix has more rows (outputs) than columns (inputs), so that each output moves about as much as in a square
    one. A convolution kernel would count as the matrix (out_channels, in_channels x kernel). The matrices of one
    shape are orthogonalized together, as one batch: on a CPU, many small products cost more than a few larger
    ones."""

    def __init__(self, params, lr=0.02, momentum=0.95, dtype=torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self.dtype = dtype  # of the orthogonalization; momentum and weights stay in their own

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}  # (rows, columns) -> [(parameter, its momentum-corrected gradient as a matrix)]
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if 'momentum' not in state:
                    state['momentum'] = torch.zeros_like(p.grad)
                m = state['momentum'].lerp_(p.grad, 1 - group['momentum'])
                g = p.grad.lerp(m, group['momentum']).reshape(len(p), -1)  # Nesterov: one momentum step ahead
                by_shape.setdefault(g.shape, []).append((p, g))
            for (rows, columns), pairs in by_shape.items():
                updates = orthogonalize(torch.stack([g for _, g in pairs]).to(self.dtype))  # (n, rows, columns)
                for (p, _), update in zip(pairs, updates):
                    p.add_(update.view_as(p).to(p.dtype), alpha=-group['lr'] * max(1.0, rows / columns) ** 0.5)


class Optimizers:
    """Muon and AdamW, stepped, zeroed, saved and restored as one optimiser (train.py and checkpoint.py see one)."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):  # read afresh: load_state_dict gives each optimiser new group dicts
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none=True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {type(o).__name__: o.state_dict() for o in self.optimizers}

    def load_state_dict(self, state):
        if set(state) != {type(o).__name__ for o in self.optimizers}:
            raise ValueError('the checkpoint was saved with another choice of optimisers')
        for o in self.optimizers:
            o.load_state_dict(state[type(o).__name__])
