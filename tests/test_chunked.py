"""The chunked head + loss of training equals the plain path (full logits, then the loss) in loss and in
every gradient, for cross-entropy and for distillation, with and without a logit soft-cap."""

import copy

import pytest
import torch
from families import family_configs, trained_like

from inheritune.models.architectures import adapter_for
from inheritune.models.chunked import final_hidden, head_loss, supports
from inheritune.training.optim import cross_entropy, distillation_loss


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
            th = final_hidden(teacher, x)
            th = th.reshape(-1, th.shape[-1])
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


def _run(model, teacher, chunked):
    from types import SimpleNamespace

    return SimpleNamespace(forward=model.base_model if chunked else model, teacher=teacher, teacher_cache=None,
                           chunked=chunked, head=model.get_output_embeddings(),
                           cap=getattr(model.config, "final_logit_softcapping", None))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kd", [False, True])
def test_training_loss_with_a_project_out_family_equals_the_plain_path(dtype, tolerance, kd):
    """The trainer's own loss functions (train._chunked_loss vs train._plain_loss), with an OPT-350m-shaped model
    (project_out maps hidden_size 32 to word_embed_proj_dim 16, which the head reads) as student and as KD teacher.
    bf16 autocast rounds the two paths differently: its tolerance is 2e-2 on the loss and 5% of the largest
    gradient entry on every gradient entry (fp32: 1e-5 and 1e-4)."""
    from transformers import OPTConfig

    from inheritune.train import _chunked_loss, _plain_loss
    from inheritune.training.recipe import TrainConfig

    opt = OPTConfig(hidden_size=32, word_embed_proj_dim=16, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                    vocab_size=128, max_position_embeddings=64, dropout=0.0)
    student = trained_like(opt, seed=3).train()
    teacher = None
    if kd:  # a different, wider teacher of the same family: its head reads 16 of its 48 hidden units
        teacher = trained_like(OPTConfig(**{**opt.to_dict(), "hidden_size": 48, "ffn_dim": 96}), seed=9).eval()
        assert teacher.config.hidden_size != teacher.get_output_embeddings().in_features
    config = TrainConfig(kd_alpha=0.6, kd_temperature=2.0)
    x, y = torch.randint(0, 128, (2, 24)), torch.randint(0, 128, (2, 24))
    results = []
    for chunked in (False, True):
        student.zero_grad(set_to_none=True)
        run = _run(student, teacher, chunked)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = (_chunked_loss if chunked else _plain_loss)(run, x, y, config)
        loss.backward()
        results.append((loss.item(), _grads(student)))
    (plain, expected), (chunked, got) = results
    assert chunked == pytest.approx(plain, abs=tolerance)
    assert got.keys() == expected.keys()
    largest = max(g.abs().max().item() for g in expected.values())
    worst = max((got[name] - expected[name]).abs().max().item() for name in expected)
    assert worst <= (1e-4 if dtype == torch.float32 else 5e-2) * largest, (worst, largest)


def test_ignored_targets_are_left_out_as_on_the_plain_path():
    torch.manual_seed(2)
    head = torch.nn.Linear(8, 30)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    teacher_logits = torch.randn(2, 9, 30)
    y = torch.randint(0, 30, (2, 9))
    y[0, :4] = -100
    y[1, 7] = -100
    for kd in (False, True):
        plain = distillation_loss(head(hidden), teacher_logits, y, 0.6, 1.5)[0] if kd else cross_entropy(head(hidden), y)
        plain.backward()
        expected = [t.grad.clone() for t in (hidden, head.weight, head.bias)]
        for t in (hidden, head.weight, head.bias):
            t.grad = None
        flat = teacher_logits.reshape(-1, 30)
        chunked = head_loss(hidden, head, y, None, (lambda rows: flat[rows]) if kd else None, 0.6, 1.5, chunk=5)
        chunked.backward()
        assert chunked.item() == pytest.approx(plain.item(), abs=1e-6)
        for got, want in zip((hidden.grad, head.weight.grad, head.bias.grad), expected):
            assert torch.allclose(got, want, atol=1e-6)
        assert hidden.grad[0, :4].abs().max() == 0  # ignored positions get no gradient
        for t in (hidden, head.weight, head.bias):
            t.grad = None
