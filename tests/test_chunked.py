"""The chunked head + loss of training equals the plain path (full logits, then the loss) in loss and in
every gradient, for cross-entropy and for distillation, with and without a logit soft-cap."""

import copy

import pytest
import torch

from families import family_configs, trained_like
from inheritune.architectures import adapter_for
from inheritune.chunked import final_hidden, head_loss, supports
from inheritune.optim import cross_entropy, distillation_loss


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _config(family):
    config = copy.deepcopy(family_configs()[family])
    if family == "gemma3_text":
        config.final_logit_softcapping = 2.0  # small, so that the cap bends many logits
    return config


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
@pytest.mark.parametrize("kd", [False, True])
def test_chunked_loss_and_gradients_equal_the_plain_path(family, kd):
    torch.manual_seed(0)
    model = trained_like(_config(family), seed=5).train()
    teacher = trained_like(_config(family), seed=6).eval() if kd else None
    x = torch.randint(0, 128, (3, 20))
    y = torch.randint(0, 128, (3, 20))
    assert supports(model)

    torch.manual_seed(123)  # GPT-2 keeps dropout on in training: both paths draw the same masks
    logits = model(x).logits  # the plain path: the model's own logits (soft-capped by the model)
    if kd:
        with torch.no_grad():
            teacher_logits = teacher(x).logits
        plain = distillation_loss(logits, teacher_logits, y, 0.6, 2.0)[0]
    else:
        plain = cross_entropy(logits, y)
    plain.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    adapter = adapter_for(model.config)
    teacher_fn = None
    if kd:
        with torch.no_grad():
            th = final_hidden(teacher, x).reshape(-1, model.config.hidden_size)
        teacher_fn = lambda rows: adapter.soft_cap(teacher.config, teacher.get_output_embeddings()(th[rows]))  # noqa
    cap = getattr(model.config, "final_logit_softcapping", None)
    torch.manual_seed(123)
    chunked = head_loss(final_hidden(model, x), model.get_output_embeddings(), y, cap, teacher_fn, alpha=0.6,
                        temperature=2.0, chunk=7)  # 60 positions in uneven chunks
    chunked.backward()
    got = _grads(model)
    assert chunked.item() == pytest.approx(plain.item(), abs=1e-5)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5, rtol=1e-4), name


def test_a_head_with_a_bias_and_a_scaled_loss():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 30)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    y = torch.randint(0, 30, (2, 9))
    (3.0 * cross_entropy(head(hidden), y)).backward()
    expected = [t.grad.clone() for t in (hidden, head.weight, head.bias)]
    for t in (hidden, head.weight, head.bias):
        t.grad = None
    (3.0 * head_loss(hidden, head, y, chunk=4)).backward()
    for got, want in zip((hidden.grad, head.weight.grad, head.bias.grad), expected):
        assert torch.allclose(got, want, atol=1e-6)
