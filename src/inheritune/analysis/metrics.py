"""Lazy-layer metrics (definitions in PAPER.md §1), batched over sequences and heads.

Attention tensors are [..., T, T] post-softmax causal matrices whose rows sum to 1. Every function reduces
the two trailing dimensions, so a [B, H, T, T] batch gives [B, H] results in one call.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-6  # float slack on the cumulative thresholds (the identity reaches 0.9 exactly at k = 0.9 T)


def squared_singular_values(attn: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """s_i^2 in descending order, from the eigenvalues of A A^T (symmetric: faster than an SVD). float32 is
    enough for energy shares (errors ~1e-7 of s_1^2); pass float64 for constructed edge cases."""
    a = attn.to(dtype)
    gram = a @ a.transpose(-1, -2)
    return _eigvalsh(gram).flip(-1).clamp_min(0.0).double()


def _eigvalsh(gram: torch.Tensor) -> torch.Tensor:
    """Batched eigenvalues, with the batch split over threads: LAPACK runs each small matrix on one core, and
    torch releases the GIL, so on CPU two threads give about twice the throughput of one call."""
    threads = torch.get_num_threads()
    flat = gram.reshape(-1, *gram.shape[-2:])
    if gram.device.type != "cpu" or threads < 2 or len(flat) < 64:
        return torch.linalg.eigvalsh(gram)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(torch.linalg.eigvalsh, flat.chunk(threads)))
    return torch.cat(parts).reshape(*gram.shape[:-1])


def energy_rank(attn: torch.Tensor, taus: float | list[float] = 0.9, dtype: torch.dtype = torch.float32,
                fast: bool = True) -> torch.Tensor:
    """Smallest k with sum_{i<=k} s_i^2 / sum_j s_j^2 >= tau; shape [..., len(taus)] (or [...] for one tau).

    ``fast``: most attention matrices put tau of their energy in a few directions, so the rank is first bounded
    from a small projection (``_bounded_ranks``) and the full eigenvalues are computed only for the matrices
    whose bounds do not meet; the result is the same."""
    single = isinstance(taus, (int, float))
    tau = torch.tensor([taus] if single else list(taus), dtype=torch.float64, device=attn.device)
    flat = attn.reshape(-1, *attn.shape[-2:])
    ranks = torch.zeros(len(flat), len(tau), dtype=torch.long, device=attn.device)
    todo = torch.ones(len(flat), dtype=torch.bool, device=attn.device)
    if fast and dtype == torch.float32 and attn.shape[-1] > 2 * _SKETCH and len(flat):  # float64 asks for the full path
        bounded, certain = _bounded_ranks(flat, tau)
        ranks[certain], todo = bounded[certain], ~certain
    if todo.any():
        s2 = squared_singular_values(flat[todo], dtype)
        energy = s2.cumsum(-1) / s2.sum(-1, keepdim=True)
        ranks[todo] = (energy.unsqueeze(-2) < (tau - _EPS).unsqueeze(-1)).sum(-1) + 1
    ranks = ranks.reshape(*attn.shape[:-2], len(tau))
    return ranks[..., 0] if single else ranks


_SKETCH = 4  # directions of the projection that bounds the rank
_OMEGA: dict[int, torch.Tensor] = {}
_MARGIN = 1e-4  # share of the energy by which a bound must clear the threshold (float32 rounding is ~1e-6)


def _bounded_ranks(flat: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ranks of the matrices whose rank a projection pins down, and which those are.

    With Q an orthonormal basis of a subspace (two power steps on fixed random directions) and B = Q^T A:
    A^T A = B^T B + R^T R with R = A - Q Q^T A, both terms positive semidefinite, so for every k
        S_k(B) <= S_k(A) <= S_k(B) + ||R||_F^2,   S_k = sum of the top k squared singular values,
    and ||R||_F^2 = ||A||_F^2 - ||B||_F^2 (Ky Fan). The rank (smallest k with S_k(A) >= tau ||A||_F^2) is then
    at most the smallest k with S_k(B) >= tau ||A||^2 and at least the smallest k with S_k(B) + ||R||^2 >= it;
    where both agree (with a margin for rounding) the rank is known exactly."""
    a = flat.float()
    t = a.shape[-1]
    if t not in _OMEGA:  # fixed random directions per size: the same matrices always get the same bounds
        _OMEGA[t] = torch.randn(t, _SKETCH, generator=torch.Generator(device="cpu").manual_seed(0))
    omega = _OMEGA[t].to(a.device)
    y = a @ omega
    y = a @ (a.transpose(-1, -2) @ y)  # a power step: the subspace turns towards the top directions
    q = torch.linalg.qr(y).Q
    b = q.transpose(-1, -2) @ a  # [n, k, T]
    s2 = torch.linalg.eigvalsh((b @ b.transpose(-1, -2)).double()).flip(-1).clamp_min(0.0)  # [n, k]
    total = (a * a).sum((-1, -2)).double()
    residual = (total - s2.sum(-1)).clamp_min(0.0)
    partial = s2.cumsum(-1) / total.unsqueeze(-1)  # S_k(B) / ||A||^2
    slack = (residual / total).unsqueeze(-1)
    threshold = (tau - _EPS).view(1, -1, 1)  # [1, n_tau, 1]
    upper = (partial.unsqueeze(1) < threshold + _MARGIN).sum(-1) + 1  # [n, n_tau]; > k: not bounded
    lower = (partial.unsqueeze(1) + slack.unsqueeze(1) < threshold - _MARGIN).sum(-1) + 1
    certain = ((upper == lower) & (upper <= _SKETCH)).all(-1) & (total > 0)
    return upper, certain


def column_mass(attn: torch.Tensor, eta: float = 0.9) -> torch.Tensor:
    """m*: how many columns, taken in order j = 1..m, hold a share eta of ||A||_F^2 (share_j = ||A[:, j]||^2)."""
    a = attn.double()
    shares = (a * a).sum(-2)
    cumulative = shares.cumsum(-1) / shares.sum(-1, keepdim=True)
    return (cumulative < eta - _EPS).sum(-1) + 1


def row_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Mean over query rows i >= 1 of H(A[i, :i+1]) / log(i + 1): 0 = one column, 1 = uniform."""
    t = attn.shape[-1]
    a = attn.double().clamp_min(0.0)
    plogp = torch.where(a > 0, a * a.log(), torch.zeros_like(a))
    entropy = -plogp.sum(-1)[..., 1:]  # row 0 sees a single key: no choice to measure
    visible = torch.log(torch.arange(2, t + 1, dtype=torch.float64, device=attn.device))
    return (entropy / visible).mean(-1)


def sink_mass(attn: torch.Tensor) -> torch.Tensor:
    """alpha_1 = mean over queries of A[i, 0], the attention paid to the first token."""
    return attn.double()[..., :, 0].mean(-1)


def first_token_mass(attn: torch.Tensor, first_query: int | None = None) -> torch.Tensor:
    """Mean over queries i >= ``first_query`` of A[i, 0]: the attention paid to position 0 by queries that have
    other keys to choose from (early queries see few keys, so their mass on position 0 says little). The
    default is 16, or T // 2 for sequences of 32 tokens or fewer."""
    t = attn.shape[-1]
    start = first_query if first_query is not None else first_query_of(t)
    return attn.double()[..., start:, 0].mean(-1)


def first_query_of(t: int) -> int:
    return 16 if t > 32 else t // 2


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """1 - cos(x_l[t], x_{l+1}[t]) per token ([B, T]); BI_l is its mean."""
    return 1.0 - torch.nn.functional.cosine_similarity(x_in.double(), x_out.double(), dim=-1)


def angular_distance(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(x_a, x_b)) / pi on the given (last-token) vectors, per sequence."""
    cos = torch.nn.functional.cosine_similarity(x_a.double(), x_b.double(), dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


# -------------------------------------------------------------------------------- uniform attention
def uniform_attention(t: int, window: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The causal matrix of a head that averages evenly over every key it sees: A[i, j] = 1 / (visible keys of
    row i) for the (at most ``window``) keys j <= i. It is what an untrained head computes."""
    i = torch.arange(t).unsqueeze(1)
    j = torch.arange(t).unsqueeze(0)
    visible = (j <= i) & ((i - j < window) if window else torch.ones(t, t, dtype=torch.bool))
    a = visible.to(dtype)
    return a / a.sum(-1, keepdim=True)


_UNIFORM: dict[tuple, dict] = {}


def uniform_reference(t: int, taus: float | list[float] = 0.9, window: int | None = None) -> dict:
    """Energy ranks (one per tau) and normalised entropy of the uniform causal matrix of size t (computed
    exactly, by the same definitions as the measured heads, in float64)."""
    taus = [taus] if isinstance(taus, (int, float)) else list(taus)
    window = window if window and window < t else None  # a window as long as the sequence is no window
    key = (t, tuple(taus), window)
    if key not in _UNIFORM:
        a = uniform_attention(t, window)
        _UNIFORM[key] = {"rank": [int(r) for r in energy_rank(a, taus, dtype=torch.float64)],
                         "entropy": float(row_entropy(a)), "t": t, "window": window}
    return _UNIFORM[key]


def attention_state(rank: float, entropy: float, uniform: dict, lazy_limit: float, rank_tolerance: float = 0.25,
                    entropy_tolerance: float = 0.05) -> str:
    """'uniform' (rank within
    ``rank_tolerance`` (relative) of the uniform matrix's and entropy within ``entropy_tolerance`` of its: an
    untrained head that averages), 'lazy' (rank <= lazy_limit: the paper's collapse onto one column) or
    'attentive'. ``rank`` is at the main tau (``uniform['rank'][0]``)."""
    reference = uniform["rank"][0]
    # Uniform is tested first: at tiny T the uniform matrix's own rank can be 1, but its entropy is the
    # maximum, while a collapsed (lazy) head's entropy is near 0.
    if abs(rank - reference) <= rank_tolerance * reference and abs(entropy - uniform["entropy"]) <= entropy_tolerance:
        return "uniform"
    if rank <= lazy_limit:
        return "lazy"
    return "attentive"
