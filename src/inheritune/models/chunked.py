"""The head and the loss in chunks of positions, so that the [tokens, vocab] logits never exist.

With a 49K vocabulary the logits of an 8 x 256 batch are 400 MB in fp32, written by the head, read by the
softmax, written again as their gradient and read by two matmuls: on a CPU that memory traffic costs more
than the arithmetic. Here each chunk of positions computes its logits, its share of the loss and, at once,
its gradient (the loss is the end of the graph, so d loss / d logits is known in the forward pass), which
goes straight into the gradients of the hidden states and of the head. The backward pass then only scales
them by the incoming gradient. Same FLOPs as the plain path (three head matmuls), none of the traffic.

Cross-entropy and knowledge distillation (alpha CE + (1 - alpha) T^2 KL(teacher || student), batch mean)
are exact: tests compare loss and gradients with the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 256  # positions per chunk: 256 x 49K fp32 logits = 50 MB


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, teacher_logits_fn, cap, alpha, temperature, chunk):
        valid = targets >= 0  # negative targets (-100, as torch's ignore_index) are not scored, as on the plain path
        rows_total, n = hidden.shape[0], max(1, int(valid.sum()))
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        ce_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
        kl_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for first in range(0, rows_total, chunk):
            rows = slice(first, min(first + chunk, rows_total))
            h, keep = hidden[rows], valid[rows]
            y = targets[rows].clamp(min=0)
            z = F.linear(h, weight, bias).float()
            if cap:
                squashed = torch.tanh(z / cap)
                logits = squashed * cap
            else:
                logits = z
            log_p = torch.log_softmax(logits, dim=-1)
            picked = log_p.gather(1, y.unsqueeze(1)).squeeze(1)
            ce_sum -= picked.double()[keep].sum()
            grad = log_p.exp_()  # softmax, in place of the log-probabilities (not needed any more)
            grad.scatter_add_(1, y.unsqueeze(1), torch.full_like(picked, -1.0).unsqueeze(1))
            grad.mul_(alpha / n)
            if alpha < 1.0:
                teacher = torch.log_softmax(teacher_logits_fn(rows).float() / temperature, dim=-1)
                student = torch.log_softmax(logits / temperature, dim=-1)
                teacher_p = teacher.exp()
                kl_sum += (teacher_p * (teacher - student)).sum(-1).double()[keep].sum()
                # d/dlogits of T^2 KL(teacher || student(logits / T)) / n = T (p_student - p_teacher) / n
                grad.add_((student.exp_() - teacher_p).mul_((1.0 - alpha) * temperature / n))
            grad.mul_(keep.unsqueeze(1))
            if cap:
                grad.mul_(1.0 - squashed * squashed)
            grad_hidden[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if h.dtype == torch.float32:  # in place: no [vocab, d] temporary per chunk
                grad_weight.addmm_(grad.t(), h)
            else:
                grad_weight += (grad.t().to(h.dtype) @ h).float()
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias if grad_bias is not None else torch.empty(0))
        ctx.weight_dtype, ctx.has_bias = weight.dtype, bias is not None
        loss = alpha * ce_sum / n + (1.0 - alpha) * temperature ** 2 * kl_sum / n
        return loss.float()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden * grad_loss.to(grad_hidden.dtype), (grad_weight * grad_loss).to(ctx.weight_dtype),
                (grad_bias * grad_loss).to(ctx.weight_dtype) if ctx.has_bias else None,
                None, None, None, None, None, None)


def head_loss(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, cap: float | None = None,
              teacher_logits_fn=None, alpha: float = 1.0, temperature: float = 1.0,
              chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean loss of ``head`` (a Linear; ``cap`` its family's logit soft-cap) on hidden states [..., d] against
    ``targets`` [...]: cross-entropy, or with ``teacher_logits_fn(rows)`` (the teacher's logits of a slice of
    the flattened positions) alpha CE + (1 - alpha) T^2 KL. Positions whose target is negative (-100, torch's
    ignore_index) are not scored and get no gradient; the mean is over the scored ones."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if teacher_logits_fn is None:
        alpha = 1.0
    return _HeadLoss.apply(flat, head.weight, head.bias, targets.reshape(-1), teacher_logits_fn, cap or None,
                           float(alpha), float(temperature), int(chunk))


def final_hidden(model, inputs: torch.Tensor) -> torch.Tensor:
    """The model's residual stream after its final norm (what its head reads), from the base model."""
    return model.base_model(input_ids=inputs).last_hidden_state


def supports(model) -> bool:
    """Whether the head can be computed apart from the model: a plain Linear head read straight off the base
    model's output (every supported family); anything else keeps the plain path."""
    head = model.get_output_embeddings()
    return isinstance(head, torch.nn.Linear) and hasattr(model, "base_model") and model.base_model is not model
