"""optim.py: Muon's orthogonalisation, which parameters it takes, and the pair of optimisers saved and restored."""
import pytest
import torch

from model import SIZES, NanoVLM, VLMConfig
from optim import Muon, Optimizers, configure_optimizer, orthogonalize


@pytest.mark.parametrize('shape', [(128, 384), (384, 128), (96, 96)])
def test_orthogonalize_brings_every_singular_value_near_one(shape):
    """G = U S V^T with singular values over a decade and a half comes out as about U V^T."""
    torch.manual_seed(0)
    k = min(shape)
    U, V = torch.linalg.qr(torch.randn(shape[0], k))[0], torch.linalg.qr(torch.randn(shape[1], k))[0]
    G = U @ torch.diag(torch.logspace(-1.5, 0, k)) @ V.T
    X = orthogonalize(G)
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.6 and s.max() < 1.25, (s.min(), s.max())
    assert torch.allclose(X / s.mean(), U @ V.T, atol=0.15)  # the same directions


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    """Every parameter is optimised exactly once; Muon has the weight matrices of the encoder's and the decoder's
    blocks and the connector's, each at muon_lr (times enc_lr_scale in the encoder); AdamW has the embeddings, the
    patch embedding and every vector."""
    m = NanoVLM(VLMConfig(**{**SIZES['tiny'], 'vocab_size': 100}))
    opt = configure_optimizer(m, 0.1, 1e-3, (0.9, 0.99), 'cpu', enc_lr_scale=0.5, muon_lr=0.02)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    ids = [id(p) for g in opt.param_groups for p in g['params']]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())
    hidden = {id(p) for part in [*m.encoder.blocks, *m.decoder, m.connector] for p in part.parameters() if p.dim() == 2}
    assert {id(p) for g in muon.param_groups for p in g['params']} == hidden
    encoder = {id(p) for p in m.encoder.parameters()}
    for g in muon.param_groups:
        assert g['lr_scale'] * 1e-3 == pytest.approx(0.02 * (0.5 if id(g['params'][0]) in encoder else 1.0))
    assert any(p is m.wte.weight for g in adamw.param_groups for p in g['params'])


def test_muon_and_adamw_save_and_restore_as_one_optimiser():
    """Two models from the same start, one whose optimisers are saved and restored halfway, take the same steps."""
    cfg = VLMConfig(**{**SIZES['tiny'], 'vocab_size': 50, 'n_layer': 1, 'enc_layer': 1, 'dropout': 0.0})
    torch.manual_seed(0)
    images, idx = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8), torch.randint(0, 50, (4, 9))

    def train(model, opt, steps):
        for _ in range(steps):
            _, loss = model(images, idx[:, :-1], idx[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    a, b = NanoVLM(cfg), NanoVLM(cfg)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = (configure_optimizer(m, 0.1, 1e-3, (0.9, 0.99), 'cpu', muon_lr=0.02) for m in (a, b))
    train(a, opt_a, 2)
    train(b, opt_b, 2)
    state = opt_b.state_dict()
    opt_b = configure_optimizer(b, 0.1, 1e-3, (0.9, 0.99), 'cpu', muon_lr=0.02)
    opt_b.load_state_dict(state)
    for g in opt_a.param_groups + opt_b.param_groups:  # a schedule sets the rates after restoring, as train.py does
        g['lr'] = 1e-3 * g['lr_scale'] / 2
    train(a, opt_a, 2)
    train(b, opt_b, 2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match='another choice'):
        opt_b.load_state_dict(configure_optimizer(b, 0.1, 1e-3, (0.9, 0.99), 'cpu').state_dict())
    assert isinstance(opt_b, Optimizers)
