import pytest
import torch
import torch.nn.functional as F

from cvfp.core.model import CVFPLayer, CVFPModel


def test_hidden_dim_must_equal_context_plus_embed():
    with pytest.raises(ValueError, match=r"hidden_dim \(30\) must equal.*16 \+ 16 = 32"):
        CVFPLayer(16, 16, 30)


def test_layer_arithmetic_matches_hand_computation():
    torch.manual_seed(0)
    layer = CVFPLayer(3, 2, 5, layernorm_mix=0.5)
    c, t = torch.randn(4, 3), torch.randn(4, 2)
    W, b = layer.fnn.weight, layer.fnn.bias
    h = torch.clamp(torch.cat([c, t], 1) @ W.T + b, min=0)
    c1, t1 = c + h[:, :3], t + h[:, 3:]

    def ln(x):  # LayerNorm with weight 1, bias 0 by hand
        mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5)

    out_c, out_t = layer(c, t)
    assert out_c.shape == (4, 3) and out_t.shape == (4, 2)
    torch.testing.assert_close(out_c, 0.5 * c1 + 0.5 * ln(c1))
    torch.testing.assert_close(out_t, 0.5 * t1 + 0.5 * ln(t1))


def test_no_layernorm_mix_is_pure_residual():
    layer = CVFPLayer(2, 2, 4, layernorm_mix=0.0)
    with torch.no_grad():
        layer.fnn.weight.zero_()
        layer.fnn.bias.copy_(torch.tensor([1.0, -1.0, 2.0, 0.5]))
    c, t = torch.tensor([[0.1, 0.2]]), torch.tensor([[0.3, 0.4]])
    out_c, out_t = layer(c, t)
    torch.testing.assert_close(out_c, torch.tensor([[1.1, 0.2]]))  # ReLU kills the -1
    torch.testing.assert_close(out_t, torch.tensor([[2.3, 0.9]]))


def test_init_statistics_and_frozen_zero_head():
    torch.manual_seed(0)
    m = CVFPModel(100, 64, 64, 128, [1, 1, 2], init_std=0.1, bias_init_std=0.01)
    assert len(m.blocks) == 3 and len(list(m.layers())) == 4
    w = m.blocks[0].layers[0].fnn.weight
    assert abs(w.std().item() - 0.1) < 0.005 and abs(w.mean().item()) < 0.005
    assert m.token_output.weight.abs().sum() == 0 and not m.token_output.weight.requires_grad
    assert not m.token_embedding.weight.requires_grad  # random_frozen default


def test_embedding_kinds():
    learned = CVFPModel(10, 4, 4, 8, [1], embedding="learned")
    assert learned.token_embedding.weight.requires_grad
    w = torch.arange(40.0).reshape(10, 4)
    pre = CVFPModel(10, 4, 4, 8, [1], embedding="pretrained", pretrained_weights=w)
    torch.testing.assert_close(pre.token_embedding.weight, w)
    assert not pre.token_embedding.weight.requires_grad
    with pytest.raises(ValueError, match=r"shape \(10, 3\).*\(10, 4\)"):
        CVFPModel(10, 4, 4, 8, [1], embedding="pretrained", pretrained_weights=torch.zeros(10, 3))
    with pytest.raises(ValueError, match="allowed pretrained, random_frozen, learned"):
        CVFPModel(10, 4, 4, 8, [1], embedding="glove")


def test_embed_norm_always_applied():
    m = CVFPModel(10, 4, 4, 8, [1])
    e = m.embed(torch.tensor([1, 2, 3]))
    torch.testing.assert_close(e.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    raw = m.token_embedding.weight[[1, 2, 3]]
    v = raw.var(1, unbiased=False)
    torch.testing.assert_close(e.var(1, unbiased=False), v / (v + 1e-5), atol=1e-4, rtol=0)
    logits = m.logits(torch.zeros(3, 4), e)
    assert logits.shape == (3, 10) and logits.abs().sum() == 0


def reference_stack(model, context, token):
    """The concat formulation, written out: h = ReLU(W [c; t] + b), residual, full mix."""
    for layer in model.layers():
        m, dc = layer.layernorm_mix, layer.context_dim
        h = F.relu(F.linear(torch.cat([context, token], -1), layer.fnn.weight, layer.fnn.bias))
        c, t = context + h[:, :dc], token + h[:, dc:]
        context = (1 - m) * c + m * layer.context_norm(c)
        token = (1 - m) * t + m * layer.token_norm(t)
    return context, token


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("train", [True, False])
def test_forward_equals_concat_formulation_with_gradients(mix, train):
    """The split-weight no-grad path and the skipped mix at m in {0, 1} change no value (1e-5),
    in train and eval mode, and the gradients are those of the written-out formulation."""
    torch.manual_seed(0)
    m = CVFPModel(20, 16, 12, 28, [2, 1], layernorm_mix=mix).train(train)
    c, t = torch.randn(9, 16), torch.randn(9, 12)
    with torch.no_grad():  # the sequential passes' path
        got, want = m(c, t), reference_stack(m, c, t)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    # with a graph: same values and the same gradients for weights and inputs
    ci, ti = c.clone().requires_grad_(True), t.clone().requires_grad_(True)
    out = m(ci, ti)
    loss = (out[0] ** 2).sum() + out[1].sin().sum()
    # m = 0: the LayerNorms are skipped, so their weights get no gradient (the reference: zeros)
    grads = torch.autograd.grad(
        loss, [ci, ti, *m.blocks.parameters()], allow_unused=True, materialize_grads=True
    )
    cr, tr = c.clone().requires_grad_(True), t.clone().requires_grad_(True)
    ref = reference_stack(m, cr, tr)
    ref_grads = torch.autograd.grad(
        (ref[0] ** 2).sum() + ref[1].sin().sum(), [cr, tr, *m.blocks.parameters()]
    )
    for g, w in zip(out, ref, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    for g, w in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # frozen weights, inputs without grad, grad mode on (Phase 2 frozen stack, checks): no graph path
    m.requires_grad_(False)
    for g, w in zip(m(c, t), want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    assert {k for k, _ in m.state_dict().items()} >= {
        "blocks.0.layers.0.fnn.weight",
        "blocks.0.layers.0.fnn.bias",
    }
