"""Neuron proliferation for MetaNet: four ways to add units to a fully connected layer.

- :func:`random_birth`: fresh fan-in (PyTorch's default init), zero (or tiny random) fan-out,
  so the network computes the same function the moment the units appear.
- :func:`divide`: parents chosen in proportion to their expression split into two copies that
  share the parent's fan-out (Net2Net widening); noise on the copy's fan-in breaks the symmetry.
  Function-preserving up to that noise, exactly with noise 0.
- :func:`gradient_birth`: GradMax-like. Zero fan-in, fan-out along the top left singular vectors
  of ``G = sum_n delta_n x_n^T`` (back-propagated gradient at the consumer's output times the
  layer's input), the directions that give the new fan-in the largest gradient.
- :func:`steepest_split`: splitting steepest descent (Liu et al., 2019). Division whose two
  copies move apart along the eigenvector of the unit's *splitting matrix* with the most
  negative eigenvalue, the split that lowers the loss fastest (to second order). It needs a
  smooth activation: ReLU's second derivative is zero, and so is every splitting matrix.

ReLU and gradient-guided birth: with a zero fan-in the pre-activation is 0, where ReLU's
derivative is 0, so the new fan-in would never receive a gradient. Here the new units get a
positive *bias* ``eps`` instead: every sample sees the pre-activation ``eps > 0``, the
activation's derivative is 1, and the fan-in gradient is exactly the linearised GradMax one.
The units then output the constant ``act(eps)``, which the consumer's bias absorbs
(``b_out -= fan_out @ act(eps)``), so the function is preserved exactly whatever ``eps`` is.
That freedom is used: ``eps`` is measured in stds of the layer's pre-activations (default
0.1), not a tiny absolute number, so the first optimizer steps on the fan-in (which move the
pre-activation by far more than 0.01) do not switch the unit off on half the inputs at once.

Adam and newborn units: the core gives new units zero optimizer state, but Adam's step count
(and so its bias correction) is shared by the whole tensor. A unit born at step t then gets
steps up to ~5x larger than lr for its first hundreds of steps (its second moment is still
near zero while the correction assumes t steps of history), which drives fresh ReLU units
dead. :func:`warm_second_moments` gives them their layer's mean second moment instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.groups import UnitGroup
from ..core.optim import OptimizerArg, as_optimizer_list
from ..core.resize import grow_units, split_units
from .expression import PASS_THROUGH, dense_group

#: ``loss(outputs, targets)`` -> the mean loss (cross-entropy, or a run's objective).
LossFunction = Callable[..., torch.Tensor]


def warm_second_moments(
    model: nn.Module, layer: str, first_new: int, optimizer: OptimizerArg
) -> None:
    """Set Adam's second moments of units ``first_new:`` to the mean of the older units'.

    Applies to the layer's weight rows and bias and to the consumer's columns; optimizers
    without ``exp_avg_sq`` (SGD) are left alone. First moments stay zero.
    """
    group = dense_group(model, layer)
    for optim in as_optimizer_list(optimizer):
        for coupled in group.tensors:
            if coupled.role == "per_unit":
                continue
            state = optim.state.get(getattr(coupled.module, coupled.tensor_name), {})
            for key in ("exp_avg_sq", "max_exp_avg_sq"):
                moment = state.get(key)
                if moment is None or first_new < 1:
                    continue
                old = moment.narrow(coupled.dim, 0, first_new)
                new = moment.narrow(coupled.dim, first_new, moment.shape[coupled.dim] - first_new)
                new.copy_(old.mean(coupled.dim, keepdim=True).expand_as(new))


def random_birth(
    model: nn.Module,
    layer: str,
    n: int,
    *,
    fanout_std: float = 0.0,
    optimizer: OptimizerArg = None,
    generator: torch.Generator | None = None,
) -> UnitGroup:
    """Append ``n`` units with PyTorch's default fan-in and zero fan-out.

    ``fanout_std > 0`` draws the fan-out from N(0, (fanout_std * std(W_out))^2) instead: the
    outputs then move a little at birth, in exchange for a gradient on the fan-in at once.
    """
    group = dense_group(model, layer)
    fan_out = None
    if fanout_std > 0:
        weight = group.consumer.weight.detach()
        scale = fanout_std * float(weight.std()) if weight.numel() > 1 else fanout_std
        fan_out = torch.randn(weight.shape[0], n, generator=generator, dtype=weight.dtype) * scale
    return grow_units(model, layer, n, fan_out=fan_out, optimizer=optimizer, generator=generator)


def choose_parents(
    scores: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` distinct units drawn with probability proportional to ``scores`` (uniform if all 0)."""
    weights = scores.double().clamp_min(0)
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    # Units with zero expression can still be drawn once the expressed ones run out.
    weights = weights + weights.max() * 1e-6
    return torch.multinomial(weights, n, replacement=False, generator=generator).sort().values


def divide(
    model: nn.Module,
    layer: str,
    n: int,
    *,
    scores: torch.Tensor | None = None,
    noise: float = 0.05,
    optimizer: OptimizerArg = None,
    generator: torch.Generator | None = None,
) -> tuple[UnitGroup, torch.Tensor]:
    """Split ``n`` parents (drawn in proportion to ``scores``) into two copies each.

    The copy gets the parent's fan-in plus Gaussian noise of ``noise * std(W_in)``; parent and
    copy each keep half the parent's fan-out. Returns the group and the parents' indices.
    At most every unit divides once per call, so ``n`` is capped at the current width.
    """
    group = dense_group(model, layer)
    width = group.width
    if not 1 <= n <= width:
        raise ValueError(f"division of layer '{layer}' needs 1..{width} parents, got {n}")
    scores = torch.ones(width) if scores is None else scores
    parents = choose_parents(scores, n, generator)
    weight = group.producer.weight.detach()
    noise_std = noise * float(weight.std()) if weight.numel() > 1 else noise
    group = split_units(model, layer, parents, noise_std=noise_std, optimizer=optimizer,
                        generator=generator)
    return group, parents


def gradient_matrix(
    model: nn.Module, layer: str, inputs: torch.Tensor, targets: torch.Tensor,
    loss_fn: LossFunction = F.cross_entropy,
) -> torch.Tensor:
    """``G = sum_n delta_n x_n^T`` for the mean loss (``loss_fn``, cross-entropy by default)
    on ``(inputs, targets)``.

    ``x_n`` is the layer's input and ``delta_n`` the gradient at its consumer's output. A new
    unit with fan-out column ``w`` and (linearised) zero fan-in gets the fan-in gradient
    ``w^T G``. The model runs in eval mode (no dropout noise, no BatchNorm statistics update)
    and no parameter's ``.grad`` is touched.
    """
    return _gradient_and_input(model, layer, inputs, targets, loss_fn)[0]


def _gradient_and_input(
    model: nn.Module, layer: str, inputs: torch.Tensor, targets: torch.Tensor,
    loss_fn: LossFunction = F.cross_entropy,
) -> tuple[torch.Tensor, torch.Tensor]:
    group = dense_group(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def take_input(module, args, output):
        captured["x"] = args[0].detach()

    def take_output(module, args, output):
        captured["y"] = output

    handles = [group.producer.register_forward_hook(take_input),
               group.consumer.register_forward_hook(take_output)]
    was_training = model.training
    model.eval()
    try:
        device = group.producer.weight.device  # the data may sit on the CPU
        with torch.enable_grad():
            loss = loss_fn(model(inputs.to(device)), targets.to(device))
            (delta,) = torch.autograd.grad(loss, captured["y"])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    x = captured["x"].reshape(len(inputs), -1)
    g = delta.reshape(len(inputs), -1).double().T @ x.double()
    return g.cpu(), x  # G is small (outputs x inputs): the fan-out is chosen on the CPU


def gradient_fan_out(
    g: torch.Tensor, n: int, scale: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fan-out columns (``outputs x n``) that maximise the new fan-in's gradient norm.

    The first ``min(n, rank G)`` columns are G's top left singular vectors (GradMax's optimum
    under orthonormal fan-outs). ``G`` has rank at most its number of rows (10 for a classifier
    head), so further units get random mixtures of the singular vectors weighted by their
    singular values: still gradient-aligned, and all distinct so no two units stay twins.
    Every column has norm ``scale``.
    """
    u, s, _ = torch.linalg.svd(g, full_matrices=False)
    rank = int((s > s[0] * 1e-9).sum()) if s.numel() and s[0] > 0 else 0
    if rank == 0:  # no gradient at all (a perfectly fit batch): any direction is as good
        columns = torch.randn(g.shape[0], n, generator=generator, dtype=g.dtype)
    else:
        top = min(n, rank)
        columns = u[:, :top]
        if n > top:
            mix = torch.randn(rank, n - top, generator=generator, dtype=g.dtype)
            extra = u[:, :rank] @ (s[:rank, None] / s[0] * mix)
            columns = torch.cat([columns, extra], dim=1)
    return columns / columns.norm(dim=0).clamp_min(1e-30) * scale


def gradient_birth(
    model: nn.Module,
    layer: str,
    n: int,
    *,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 0.1,
    relative_eps: bool = True,
    scale: float | None = None,
    optimizer: OptimizerArg = None,
    generator: torch.Generator | None = None,
    loss_fn: LossFunction = F.cross_entropy,
) -> UnitGroup:
    """Append ``n`` units with zero fan-in and gradient-maximising fan-out (GradMax-like).

    Args:
        inputs, targets: the data the gradient is estimated on.
        eps: bias of the new units, so ReLU-like activations are active and pass the gradient
            (see the module docstring); the constant they then output is absorbed by the
            consumer's bias, so outputs do not change. With ``relative_eps`` (default) it is
            in units of the std of the layer's current pre-activations on ``inputs``.
        scale: norm of each new fan-out column; default the mean norm of the existing columns,
            so new units start as strong as an average unit.
    """
    group = dense_group(model, layer)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for _, m in group.path):
        raise ValueError(f"gradient-guided birth needs no BatchNorm after layer '{layer}' (it "
                         "normalises the new units' constant output away); use division")
    if group.consumer.bias is None:
        raise ValueError(f"gradient-guided birth folds a constant into the bias of "
                         f"'{group.consumer_name}', which has none")
    weight = group.consumer.weight.detach()
    if scale is None:
        scale = float(weight.norm(dim=0).mean())
    g, x = _gradient_and_input(model, layer, inputs, targets, loss_fn)
    fan_out = gradient_fan_out(g, n, scale, generator).to(weight.dtype)
    producer = group.producer.weight
    if relative_eps:
        with torch.no_grad():
            eps = eps * float(group.producer(x.to(producer.dtype)).std())
    fan_in = torch.zeros(n, producer.shape[1], dtype=producer.dtype)
    bias = torch.full((n,), float(eps), dtype=producer.dtype)
    # What the consumer reads from a unit whose pre-activation is the constant eps.
    constant = bias[None, :].to(producer.device)
    was_training = [m.training for _, m in group.path]
    with torch.no_grad():
        for _, module in group.path:
            module.eval()
            constant = module(constant)
        for (_, module), mode in zip(group.path, was_training, strict=True):
            module.train(mode)
    group = grow_units(model, layer, n, fan_in=fan_in, bias=bias, fan_out=fan_out,
                       optimizer=optimizer)
    with torch.no_grad():
        shift = fan_out.double() @ constant[0].double().cpu()
        group.consumer.bias -= shift.to(group.consumer.bias.device, weight.dtype)
    return group


def splitting_eigen(
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    rank: int = 128,
    loss_fn: LossFunction = F.cross_entropy,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's most negative splitting eigenvalue and its direction (Liu et al., 2019).

    Unit ``j`` with parameters ``theta_j = [w_j, b_j]`` (fan-in and bias) has the *splitting
    matrix* ``S_j = sum_n dL/dh_nj * act''(z_nj) * x~_n x~_n^T``, ``x~ = [x, 1]``, for the mean
    cross-entropy ``L`` on ``(inputs, targets)`` (``z`` the pre-activation, ``h`` the
    activation). Replacing the unit by two copies with half its fan-out each and parameters
    ``theta_j +- eps * v`` changes the loss by ``eps^2 / 2 * v^T S_j v + O(eps^4)``: the first
    order cancels, so a split lowers the loss exactly when ``S_j`` has a negative eigenvalue,
    fastest along its eigenvector.

    ``S_j`` is restricted to the top ``rank`` principal directions of ``x~`` on these inputs
    (exact when ``rank`` covers them all), so the work is one ``rank x rank`` eigenproblem per
    unit, not one of the fan-in's size. Returns ``(eigenvalues, directions)``, shaped
    ``(width,)`` and ``(width, fan_in + 1)`` (the last column is the bias; unit norm), on the CPU
    in float64; all zero where no split changes the loss (zero inputs, or an activation that is
    straight wherever these inputs put it). The model runs in eval mode; no parameter's
    ``.grad`` is touched. The samples' outer products are summed in blocks of 1024, so beyond
    the inputs and activations themselves the memory does not grow with the number of samples.
    """
    if rank < 1:
        raise ValueError(f"splitting rank must be >= 1, got {rank}")
    group = dense_group(model, layer)
    activation = splitting_activation(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def take_pre_activation(module, args, output):
        captured["x"], captured["z"] = args[0].detach(), output.detach()

    def take_activation(module, args, output):
        captured["h"] = output

    handles = [group.producer.register_forward_hook(take_pre_activation),
               activation.register_forward_hook(take_activation)]
    was_training = model.training
    model.eval()
    try:
        device = group.producer.weight.device
        with torch.enable_grad():
            loss = loss_fn(model(inputs.to(device)), targets.to(device))
            (sensitivity,) = torch.autograd.grad(loss, captured["h"])
            curvature = _second_derivative(activation, captured["z"])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    weights = (sensitivity * curvature).reshape(len(inputs), -1).double().cpu()  # N x width
    x = captured["x"].reshape(len(inputs), -1).double().cpu()
    if group.producer.bias is not None:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    width, size = weights.shape[1], group.producer.weight.shape[1] + 1
    # x = U diag(s) V^T: S_j = V (A^T diag(c_j) A) V^T with A = U diag(s), kept to the top ranks.
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = min(rank, int((s > s[0] * 1e-9).sum())) if s.numel() and s[0] > 0 else 0
    if keep == 0 or not weights.any():
        # Zero inputs, or every unit where the activation is straight (tanh at 0): no split
        # changes the loss to second order, and none is worth making.
        return torch.zeros(width, dtype=torch.float64), torch.zeros(width, size,
                                                                    dtype=torch.float64)
    a, basis = u[:, :keep] * s[:keep], vh[:keep].T  # N x r, (fan_in [+ 1]) x r
    values, directions = [], []
    upper = torch.triu_indices(keep, keep)
    for chunk in weights.T.split(256):  # units
        # Every unit's A^T diag(c_j) A: one product with the samples' outer products a_n a_n^T
        # (upper triangles), summed over blocks of samples so memory does not grow with N.
        entries = chunk.new_zeros(len(chunk), upper.shape[1])
        for start in range(0, len(a), 1024):
            block = a[start:start + 1024]
            entries += chunk[:, start:start + 1024] @ (block[:, upper[0]] * block[:, upper[1]])
        matrices = chunk.new_zeros(len(chunk), keep, keep)
        matrices[:, upper[0], upper[1]] = entries
        matrices[:, upper[1], upper[0]] = entries
        eigenvalues, eigenvectors = torch.linalg.eigh(matrices)
        values.append(eigenvalues[:, 0])
        directions.append(eigenvectors[:, :, 0] @ basis.T)
    directions = torch.cat(directions)
    if group.producer.bias is None:  # keep the documented shape: a zero bias component
        directions = torch.cat([directions, directions.new_zeros(len(directions), 1)], dim=1)
    return torch.cat(values), directions


def steepest_split(
    model: nn.Module,
    layer: str,
    n: int,
    *,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    step: float = 0.05,
    rank: int = 128,
    optimizer: OptimizerArg = None,
    loss_fn: LossFunction = F.cross_entropy,
) -> tuple[UnitGroup, torch.Tensor]:
    """Splitting steepest descent: split the ``n`` units with the most negative splitting
    eigenvalue (see :func:`splitting_eigen`) into two copies with half the fan-out each.

    The parent moves to ``theta + step * |theta| * v`` and its copy to
    ``theta - step * |theta| * v`` (``v`` its eigenvector, ``theta`` fan-in and bias), so the
    loss on ``(inputs, targets)`` falls by about ``step^2 |theta|^2 |lambda| / 2`` per split;
    the falls of units split together add up, to second order. Units whose eigenvalue is not
    negative (beyond rounding) are never split, so fewer than ``n`` (or no) units may divide.
    As with :func:`divide`, the copies start with a zero optimizer state: Adam's large first
    steps separate them from their parents (inheriting the parent's state was measured worse,
    see ``docs/metanet.md``). Returns the group and the parents' indices.
    """
    group = dense_group(model, layer)
    if not 1 <= n <= group.width:
        raise ValueError(f"splitting layer '{layer}' needs 1..{group.width} units, got {n}")
    if not step > 0:
        raise ValueError(f"the split step must be a positive number, got {step}")
    values, directions = splitting_eigen(model, layer, inputs, targets, rank=rank,
                                         loss_fn=loss_fn)
    order = torch.argsort(values, stable=True)
    # Eigenvalues within rounding of zero promise nothing (and could differ between ranks).
    tolerance = 1e-9 * float(values.abs().max()) if values.numel() else 0.0
    parents = order[values[order] < -tolerance][:n].sort().values
    if parents.numel() == 0:
        return group, parents
    width = group.width
    group = split_units(model, layer, parents, optimizer=optimizer)
    copies = torch.arange(width, width + parents.numel())
    producer = group.producer
    with torch.no_grad():
        weight = producer.weight
        theta = weight[parents].double().cpu()
        if producer.bias is not None:
            theta = torch.cat([theta, producer.bias[parents].double().cpu()[:, None]], dim=1)
        else:
            theta = torch.cat([theta, theta.new_zeros(len(theta), 1)], dim=1)
        shift = step * theta.norm(dim=1, keepdim=True) * directions[parents]
        for rows, sign in ((parents, 1.0), (copies, -1.0)):
            rows = rows.to(weight.device)
            weight[rows] += sign * shift[:, :-1].to(weight.device, weight.dtype)
            if producer.bias is not None:
                producer.bias[rows] += sign * shift[:, -1].to(weight.device, weight.dtype)
    return group, parents


def splitting_activation(model: nn.Module, layer: str) -> nn.Module:
    """The activation module a split of ``layer`` acts through, checked to be splittable.

    Splitting needs the Linear to feed one elementwise activation straight into its consumer
    (no BatchNorm, whose batch statistics a split would change) whose second derivative is not
    zero everywhere (ReLU's is: every splitting matrix would be zero).
    """
    group = dense_group(model, layer)
    steps = [module for _, module in group.path if not isinstance(module, PASS_THROUGH)]
    if len(steps) != 1 or isinstance(steps[0], nn.modules.batchnorm._BatchNorm):
        names = [type(module).__name__ for _, module in group.path]
        raise ValueError(f"splitting needs layer '{layer}' to feed one activation function "
                         f"straight into '{group.consumer_name}', but it passes {names}; use "
                         "division")
    activation = steps[0]
    probe = torch.linspace(-4, 4, 81, dtype=group.producer.weight.dtype)
    if not _second_derivative(activation, probe).any():
        raise ValueError(f"splitting needs an activation with a second derivative (--activation "
                         f"tanh, sigmoid or gelu); layer '{layer}' uses "
                         f"{type(activation).__name__}, whose second derivative is zero, so no "
                         "split can lower the loss: use division")
    return activation


def _second_derivative(activation: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``act''(z)`` elementwise, by differentiating the activation twice (zero where it is
    piecewise linear, as ReLU)."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        (first,) = torch.autograd.grad(activation(z).sum(), z, create_graph=True)
        if not first.requires_grad:  # piecewise linear: the derivative is constant in z
            return torch.zeros_like(z)
        (second,) = torch.autograd.grad(first.sum(), z, allow_unused=True)
    return torch.zeros_like(z) if second is None else second.detach()
