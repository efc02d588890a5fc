"""NADE: Neural Autoregressive Distribution Estimator (Larochelle & Murray 2011).

Every conditional has its own hidden layer, and all of them share the input weights W:

  h_i = act(a_i),   a_i = c + W[:, <i] x_<i           (Larochelle & Murray 2011, Sec. 3; act = sigmoid)
  p(x_i = 1 | x_<i) = sigmoid(b_i + V_i . h_i)        (idem; a 256-way softmax for 8-bit data)

Because a_{i+1} = a_i + W[:, i] x_i (idem, the recurrence that makes NADE O(HD)), one sweep over the
dimensions, carrying a_i, computes every conditional. ``Sweep`` below runs it for a chunk of the batch
at a time, so that a_i and the hidden layer of one dimension (rows x H) stay in cache, and never
holds a batch x D x H tensor (the exclusive cumulative sum of W[:, i] x_i over i would be 800 MB
at the paper's size: memory traffic, not arithmetic, would set the speed). Where x_i = 0, a_{i+1} = a_i:
in binarized images most pixels are 0, so h_{i+1} is recomputed only in the rows whose x_i is not.

Training takes the gradient in the same sweep. With d_i = dL/da_i (back through h_i), the
weights W[:, j] reach every a_i with i > j, so

  dL/dW[:, j] = sum_b x_bj (T_b - P_bj),   T_b = sum_i d_bi,   P_bj = sum_{i<=j} d_bi,
  dL/dc = sum_b T_b,

where P is a running sum the sweep carries and the T_b terms are one matrix product at the end. The
loss of each conditional is known as soon as its logits are, so ``MeanLogLikelihood`` computes the
gradient of the batch's mean log-likelihood in its forward call: one sweep and one activation per
hidden unit per step, where autograd would need a forward and a backward pass. ``Logits`` serves
every other use (any upstream gradient, gradients with respect to x): its backward sweeps in
reverse, a block of dimensions at a time from checkpoints of a, carrying G_bj = sum_{i>j} d_bi, so
that a gradient that is zero (dL/dx_bj for a conditional j does not reach) is exactly zero.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ...rules import POSITIVE, checked, checked_choice
from ..base import PhaseLoss
from ..nn.distributions import bernoulli_log_prob, categorical_log_prob
from ..nn.eager import eager_only
from ..objectives import Objective
from ..registry import register
from .base import LEVELS, AutoregressiveModel

aten = torch.ops.aten
#: activation, written into ``out``, and its backward from the activation's output
ACTIVATIONS = {
    "sigmoid": (lambda a, out: torch.sigmoid(a, out=out), aten.sigmoid_backward.grad_input),
    "tanh": (lambda a, out: torch.tanh(a, out=out), aten.tanh_backward.grad_input),
    "relu": (
        lambda a, out: torch.clamp_min(a, 0.0, out=out),
        lambda g, h, grad_input: aten.threshold_backward.grad_input(g, h, 0.0, grad_input=grad_input),
    ),
}
CACHE_FLOATS = 2**17  # a chunk of the batch has rows x H <= this (512 KiB of float32: about an L2 cache)
BLOCK = 8  # dimensions whose logits and gradients go through one batched product
SPARSE = 0.4  # where x_i is nonzero in at most this share of the rows, h_{i+1} is updated in those rows only


def block_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """sum_i log p(x_i | x_<i) over a block of dimensions: logits (k, n, bins), x (k, n) -> (n,)."""
    k, n, bins = logits.shape
    if bins == 1:
        return bernoulli_log_prob(logits.reshape(-1), x.reshape(-1)).view(k, n).sum(0)
    return categorical_log_prob(logits.reshape(-1, bins), x.reshape(-1)).view(k, n).sum(0)


def block_score(logits: Tensor, x: Tensor) -> Tensor:
    """d log p(x_i | x_<i) / d logits_i for a block (k, n, bins): x - sigmoid(l) for a Bernoulli,
    onehot(x) - softmax(l) for a 256-way categorical -- the gradients of ``block_log_prob``, in closed
    form (autograd on small blocks costs more than the arithmetic)."""
    if logits.shape[-1] == 1:
        return x[..., None] - torch.sigmoid(logits)
    score = torch.softmax(logits, -1).neg_()
    k = torch.round(x * (LEVELS - 1)).long()[..., None]
    return score.scatter_add_(-1, k, torch.ones_like(score[..., :1]))


def no_autocast(fn):
    """Sweeps run in the parameters' dtype: mixed precision would round the running sums."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return run


@dataclass
class Grads:
    W: Tensor  # (D, H) until ``over_chunks`` transposes it
    c: Tensor
    V: Tensor
    b: Tensor
    x: Optional[Tensor] = None  # (D, B) likewise


class Sweep:
    """The recurrence over a chunk of the batch at a time (at most ``rows`` examples): x (B, D),
    W (H, D), c (H,), V (D, bins, H), b (D, bins), detached. Every tensor the loops touch is a view
    made here or in ``start``, so that each step of a loop is one Python call per arithmetic
    operation on a (rows, H) slice."""

    def __init__(self, x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, activation: str, rows: int, grads: bool):
        self.act, self.act_backward = ACTIVATIONS[activation]
        self.dim, hidden, bins = x.shape[1], W.shape[0], V.shape[1]
        self.xt, self.Wt, self.c = x.t().contiguous(), W.t().contiguous(), c  # row i: dimension i
        self.V, self.Vt, self.b = V, V.transpose(1, 2).contiguous(), b
        new = lambda *shape: x.new_empty(*shape)  # noqa: E731
        self.a, self.d, self.sum_d = new(rows, hidden), new(rows, hidden), new(rows, hidden)
        # Gradients need every h_i of a block; without them one buffer, updated in place, serves all.
        self.h, self.logits = new(BLOCK if grads else 1, rows, hidden), new(BLOCK, rows, bins)
        self.W_i, self.V_i, self.Vt_i, self.b_i = self.Wt.unbind(0), V.unbind(0), self.Vt.unbind(0), b.unbind(0)
        self.g = (
            Grads(torch.zeros_like(self.Wt), torch.zeros_like(c), torch.zeros_like(V), torch.zeros_like(b))
            if grads
            else None
        )
        self.gW_i = self.g.W.unbind(0) if grads else None
        self.checkpoints: Optional[Tensor] = None  # a at each block's start (reverse_sweep)

    def start(self, b0: int, b1: int) -> None:
        """Begin the chunk of rows b0..b1-1: its views, a = c (a_1) and no sum of d yet; and, for every
        dimension i, the rows whose x_i is not 0 (``moved``): the only ones where a_{i+1} != a_i."""
        n = b1 - b0
        self.a_n, self.d_n, self.sum_d_n, self.logits_n = self.a[:n], self.d[:n], self.sum_d[:n], self.logits[:, :n]
        self.h_n = self.h[:, :n]
        slots = self.h_n.unbind(0)
        self.h_j = [slots[j % len(slots)] for j in range(BLOCK)]
        self.logits_j = self.logits_n.unbind(0)
        x = self.xt[:, b0:b1]
        self.x_i, self.x_col_i = x.unbind(0), x[..., None].unbind(0)
        nonzero = x != 0
        counts = nonzero.sum(1)
        self.moved = nonzero.nonzero()[:, 1].split(counts.tolist())
        self.sparse = (counts <= SPARSE * n).tolist()  # recompute h_{i+1} in those rows only
        self.a_n.copy_(self.c.expand(n, -1))
        self.sum_d_n.zero_()

    def blocks(self) -> list[tuple[int, int]]:
        return [(i0, min(i0 + BLOCK, self.dim)) for i0 in range(0, self.dim, BLOCK)]

    def advance(self, i0: int, i1: int) -> None:
        """a_{i1} from a_{i0}."""
        for i in range(i0, i1):
            self.a_n.addcmul_(self.x_col_i[i], self.W_i[i])

    def forward(self, i0: int, i1: int, h_before: Optional[Tensor]) -> Tensor:
        """h_i and the logits of dimensions i0..i1-1, advancing a to a_{i1}; (i1 - i0, rows, bins).
        ``h_before`` is h_{i0-1} (None: not at hand). Binarized images are mostly 0, and h_i equals
        h_{i-1} in every row where x_{i-1} is 0: the activation is computed in the other rows only."""
        act, a, h_j, moved, sparse, x_col_i, W_i = (
            self.act,
            self.a_n,
            self.h_j,
            self.moved,
            self.sparse,
            self.x_col_i,
            self.W_i,
        )
        addmm, logits_j, b_i, Vt_i = torch.addmm, self.logits_j, self.b_i, self.Vt_i
        for j, i in enumerate(range(i0, i1)):
            if h_before is None or not sparse[i - 1]:
                act(a, out=h_j[j])  # h_i
            else:  # (a copy onto itself where one buffer serves: nothing)
                rows = moved[i - 1]
                h_j[j].copy_(h_before).index_copy_(0, rows, act(a.index_select(0, rows), None))
            addmm(b_i[i], h_j[j], Vt_i[i], out=logits_j[j])  # b_i + V_i h_i
            a.addcmul_(x_col_i[i], W_i[i])  # a_{i+1} = a_i + W[:, i] x_i
            h_before = h_j[j]
        return self.logits_n[: i1 - i0]

    def back_to_V(self, i0: int, i1: int, dlogits: Tensor) -> None:
        """dL/dV_i and dL/db_i of a block from its dL/dlogits (i1 - i0, rows, bins)."""
        self.g.V[i0:i1].baddbmm_(dlogits.transpose(1, 2), self.h_n[: i1 - i0])
        self.g.b[i0:i1] += dlogits.sum(1)

    def back_through(self, i: int, j: int, dlogits: Tensor) -> Tensor:
        """d_i = dL/da_i from dL/dlogits_i (rows, bins), the hidden layer h_i in slot j."""
        torch.mm(dlogits, self.V_i[i], out=self.d_n)
        return self.act_backward(self.d_n, self.h_j[j], grad_input=self.d_n)

    def back_in_order(self, i0: int, i1: int, dlogits: Tensor) -> None:
        """Dimensions i0..i1-1 of the forward-order gradient: P_i = P_{i-1} + d_i and
        dL/dW[:, i] -= sum_b x_bi P_bi (the T_b terms come at the end of the chunk)."""
        mm, d, act_backward, h_j, V_i = torch.mm, self.d_n, self.act_backward, self.h_j, self.V_i
        add_to_P, P_t, gW_i, x_i = self.sum_d_n.add_, self.sum_d_n.t(), self.gW_i, self.x_i
        for j, i in enumerate(range(i0, i1)):
            mm(dlogits[j], V_i[i], out=d)
            act_backward(d, h_j[j], grad_input=d)  # d_i
            add_to_P(d)
            gW_i[i].addmv_(P_t, x_i[i], alpha=-1.0)


def over_chunks(
    x: Tensor,
    W: Tensor,
    c: Tensor,
    V: Tensor,
    b: Tensor,
    activation: str,
    grads: bool,
    work: Callable[[Sweep, int, int], None],
) -> Optional[Grads]:
    """``work(sweep, b0, b1)`` for every chunk of the batch, and the sweep's gradients. With several
    threads, PyTorch splits each operation on a chunk among them."""
    batch, hidden = x.shape[0], W.shape[0]
    rows = max(1, min(batch, CACHE_FLOATS // hidden))
    sweep = Sweep(x, W, c, V, b, activation, rows, grads)
    for b0 in range(0, batch, rows):
        work(sweep, b0, min(b0 + rows, batch))
    if not grads:
        return None
    g = sweep.g
    g.W, g.x = g.W.t(), None if g.x is None else g.x.t()
    return g


#: ``on_logits(i0, i1, b0, b1, logits)`` sees the logits (i1 - i0, b1 - b0, bins) of dimensions i0..i1-1
#: for batch rows b0..b1-1 and returns dL/dlogits of that block, or None
LogitsHook = Callable[[int, int, int, int, Tensor], Optional[Tensor]]


def forward_sweep(
    x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, activation: str, on_logits: LogitsHook, grads: bool = False
) -> Optional[Grads]:
    """One pass over the dimensions in order, handing each block of logits to ``on_logits``; with
    ``grads``, the parameters' gradients from the dL/dlogits it returns (module docstring)."""

    def work(s: Sweep, b0: int, b1: int) -> None:
        s.start(b0, b1)
        for i0, i1 in s.blocks():
            dlogits = on_logits(i0, i1, b0, b1, s.forward(i0, i1, None if i0 == 0 else s.h_j[BLOCK - 1]))
            if s.g is None:
                continue
            s.back_to_V(i0, i1, dlogits)
            s.back_in_order(i0, i1, dlogits)
        if s.g is not None:  # + sum_b x_bj T_b: P is now T
            s.g.W.addmm_(s.xt[:, b0:b1], s.sum_d_n)
            s.g.c += s.sum_d_n.sum(0)

    return over_chunks(x, W, c, V, b, activation, grads=grads, work=work)


@no_autocast
def log_likelihood_sweep(
    x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, activation: str, grads: bool = False
) -> tuple[Tensor, Optional[Grads]]:
    """log p(x) per example (B,) by a forward sweep and, with ``grads``, the gradients of its mean."""
    log_p, xt = x.new_zeros(x.shape[0]), x.t().contiguous()

    def per_block(i0, i1, b0, b1, logits):
        x_block = xt[i0:i1, b0:b1]  # (k, n) like the logits: a contiguous dL/dlogits
        log_p[b0:b1] += block_log_prob(logits, x_block)
        return block_score(logits, x_block).div_(x.shape[0]) if grads else None

    return log_p, forward_sweep(x, W, c, V, b, activation, per_block, grads)


def reverse_sweep(
    x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, activation: str, dlogits: Tensor, x_grad: bool
) -> Grads:
    """Gradients for any dL/dlogits (D, B, bins): blocks in reverse order, each recomputed from a
    checkpoint of a, carrying G = sum of d_i over the dimensions after the current one."""

    def work(s: Sweep, b0: int, b1: int) -> None:
        if s.g.x is None and x_grad:
            s.g.x = torch.zeros_like(s.xt)
        blocks = s.blocks()
        if s.checkpoints is None:
            s.checkpoints = s.a.new_empty(len(blocks), *s.a.shape)
        s.start(b0, b1)
        G, n = s.sum_d_n, b1 - b0
        for k, (i0, i1) in enumerate(blocks):
            s.checkpoints[k, :n] = s.a_n
            s.advance(i0, i1)
        for k, (i0, i1) in reversed(list(enumerate(blocks))):
            s.a_n.copy_(s.checkpoints[k, :n])
            s.forward(i0, i1, None)  # the same h_i as the forward pass
            s.back_to_V(i0, i1, dlogits[i0:i1, b0:b1])
            for j, i in reversed(list(enumerate(range(i0, i1)))):
                s.gW_i[i].addmv_(G.t(), s.x_i[i])  # sum_b x_bi G_bi
                if s.g.x is not None:
                    s.g.x[i, b0:b1].addmv_(G, s.W_i[i])
                G.add_(s.back_through(i, j, dlogits[i, b0:b1]))
        s.g.c += G.sum(0)

    return over_chunks(x, W, c, V, b, activation, grads=True, work=work)


def _plain(x: Tensor, *params: Tensor) -> list[Tensor]:
    """Detached tensors for a sweep, x in the parameters' dtype."""
    return [x.detach().to(params[0].dtype), *(p.detach() for p in params)]


class Logits(torch.autograd.Function):
    """Every conditional's logits (B, D, bins) by a forward sweep; backward by a reverse sweep, for
    any upstream gradient and with respect to x too."""

    @staticmethod
    @no_autocast
    def forward(ctx, x, W, c, V, b, activation):
        out = W.new_empty(x.shape[1], x.shape[0], V.shape[1])  # (D, B, bins)

        def keep(i0, i1, b0, b1, logits):
            out[i0:i1, b0:b1] = logits

        forward_sweep(*_plain(x, W, c, V, b), activation, keep)
        ctx.save_for_backward(x, W, c, V, b)
        ctx.activation = activation
        return out.permute(1, 0, 2)

    @staticmethod
    @no_autocast
    def backward(ctx, upstream):
        x, W, c, V, b = ctx.saved_tensors
        g = reverse_sweep(
            *_plain(x, W, c, V, b),
            ctx.activation,
            upstream.permute(1, 0, 2).to(W.dtype),
            x_grad=ctx.needs_input_grad[0],
        )
        return g.x, g.W, g.c, g.V, g.b, None


class MeanLogLikelihood(torch.autograd.Function):
    """The batch's mean log p(x), its gradient computed in the same sweep (the loss of each
    conditional is known as soon as its logits are); backward only scales it."""

    @staticmethod
    @no_autocast
    def forward(ctx, x, W, c, V, b, activation):
        log_p, g = log_likelihood_sweep(*_plain(x, W, c, V, b), activation, grads=True)
        ctx.grads = g.W, g.c, g.V, g.b
        return log_p.mean()

    @staticmethod
    def backward(ctx, upstream):
        return (None, *(t * upstream for t in ctx.grads), None)


@register("nade")
class NADE(AutoregressiveModel):
    @dataclass
    class Config:
        hidden_units: int = checked(200, POSITIVE)  # H, every conditional's hidden layer (500 in the paper)
        activation: str = checked_choice("sigmoid", ACTIVATIONS)  # {choices} (sigmoid: the paper's)

    def __init__(self, config: Config, data, objective: Objective):
        super().__init__(config, data, objective)
        d, h, k = data.dim, config.hidden_units, self.bins
        self.W = nn.Parameter(torch.randn(h, d) / math.sqrt(d))  # input -> hidden, shared
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, k, h) / math.sqrt(h))  # hidden i -> output i
        self.b = nn.Parameter(torch.zeros(d, k))

    @property
    def params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.W, self.c, self.V, self.b

    @eager_only  # a Python loop over the dimensions: nothing for a compiler to fuse
    def logits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        out = Logits.apply(self.to_sequence(x), *self.params, self.config.activation)  # (B, D, bins)
        out = out.squeeze(-1) if self.bins == 1 else out.transpose(1, 2)  # (B, D) | (B, bins, D)
        return self.from_sequence(out)

    @eager_only
    def training_loss(self, x: Tensor, y: Optional[Tensor], phase: str) -> PhaseLoss:
        nll = -MeanLogLikelihood.apply(self.to_sequence(x), *self.params, self.config.activation)
        return nll, self.metrics(nll)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Optional[Tensor] = None, **settings) -> Tensor:
        """log p(x) per example by one sweep, never holding all the logits (B, D, 256 for 8-bit data)."""
        return log_likelihood_sweep(*_plain(self.to_sequence(x), *self.params), self.config.activation)[0]

    def log_prob_by_recurrence(self, x: Tensor) -> Tensor:
        """log p(x) by the textbook loop through autograd -- one conditional at a time, carrying a_i,
        as pytorch-generative's NADE writes it: the reference that tests and benchmarks hold the
        sweeps to. Autograd keeps every h_i, a batch x D x H tensor in all."""
        seq = self.to_sequence(x).to(self.W.dtype)
        act = ACTIVATIONS[self.config.activation][0]
        a, total = self.c.expand(seq.shape[0], -1), seq.new_zeros(seq.shape[0])
        for i in range(self.data.dim):
            logits = act(a, None) @ self.V[i].t() + self.b[i]  # (B, bins)
            total = total + block_log_prob(logits[None], seq[None, :, i])
            a = a + seq[:, i : i + 1] @ self.W[:, i : i + 1].t()  # a_{i+1} = a_i + W[:, i] x_i
        return total

    def output_logits(self, h: Tensor, i: int) -> Tensor:
        """b_i + V_i . h_i for one dimension: (B, H) -> (B, bins)."""
        return h @ self.V[i].t() + self.b[i]

    @torch.no_grad()
    def fill(self, x: Tensor, y: Optional[Tensor], observed: Tensor, temperature: float = 1.0) -> Tensor:
        """Sequential sampling in O(HD) per example, carrying a_i forward."""
        seq = self.to_sequence(torch.where(observed, x, torch.zeros_like(x))).clone()
        known = self.to_sequence(observed)
        act = ACTIVATIONS[self.config.activation][0]
        a, h = self.c.expand(seq.shape[0], -1).clone(), torch.empty(seq.shape[0], self.c.shape[0], device=seq.device)
        for i in range(self.data.dim):
            if not bool(known[:, i].all()):
                logits = self.output_logits(act(a, h), i)
                drawn = self.draw(logits.squeeze(-1) if self.bins == 1 else logits, temperature)
                seq[:, i] = torch.where(known[:, i], seq[:, i], drawn)
            a.addcmul_(seq[:, i, None], self.W[:, i])  # a_{i+1} = a_i + W[:, i] x_i
        return self.from_sequence(seq)
