"""Typed optimizer configs that validate themselves and name the wrong field."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from otofx.errors import ConfigError
from otofx.partition import ALLOCATIONS

VARIANTS = ("sgd", "adam", "adamw")

# group_divisible="auto": the multiple of channels each device's kernels run fastest.
# cpu: 8, measured (`python -m benchmarks.budget_landing --divisible`: per-channel time of a 3x3
#   conv and a linear at widths 32-64, one thread; 2-core x86_64 on 2026-12-07: convs at
#   multiples of 8 took 0.91x the per-channel time of the other widths, linears 0.97x; multiples
#   of 16 no better, 0.90x and 0.99x; the section in benchmarks/RESULTS.md). cuda: 8, NVIDIA's Tensor Core
#   requirement for FP16/BF16 GEMMs and convolutions (channels a multiple of 8 elements, 16 bytes;
#   "Deep Learning Performance Documentation: Matrix Multiplication Background User's Guide",
#   Tensor Core Requirements), not measured here (no GPU was lent to this work).
AUTO_DIVISIBLE = {"cpu": 8, "cuda": 8}


def resolve_group_divisible(config, device: torch.device) -> int:
    """``config.group_divisible`` for a model on ``device``: itself, or for ``"auto"`` the
    device's multiple from ``AUTO_DIVISIBLE`` (1 on a device not listed). An optimizer calls it
    when it is built (through ``otofx.budget.budget_for``): the int is set on the config it was
    given, and ``config.group_divisible_asked`` keeps "auto" for the report."""
    if config.group_divisible == "auto":
        config.group_divisible_asked = "auto"
        config.group_divisible = AUTO_DIVISIBLE.get(torch.device(device).type, 1)
    return config.group_divisible


def resolve_allocation(config) -> str:
    """``config.allocation``: itself, or for ``"auto"`` (the default) ``"balanced"``, except
    ``"uniform"`` under ``target_latency``: a latency budget times the subnet of the widths it
    picks end to end before training (``otofx.budget.calibrate_latency``), and only uniform's
    widths do not depend on the scores. An optimizer calls it when it is built (through
    ``otofx.budget.budget_for``): the choice is set on the config it was given, and
    ``config.allocation_asked`` keeps "auto" for the report."""
    if config.allocation == "auto":
        config.allocation_asked = "auto"
        config.allocation = "uniform" if getattr(config, "target_latency", None) is not None \
            else "balanced"
    return config.allocation


def _check(cfg, name: str, ok: bool, want: str) -> None:
    if not ok:
        raise ConfigError(f"{type(cfg).__name__}.{name} = {getattr(cfg, name)!r}: {want}.")


@dataclass
class _BaseConfig:
    """What every otofx optimizer shares: the base variant, the target and the schedule."""

    lr: float = 0.1
    variant: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    target_group_sparsity: float = 0.5
    target_flops: float | None = None     # a budget in place of target_group_sparsity: the
    target_params: float | None = None    # subnet's cost as a fraction of the dense model's
    target_latency: float | None = None   # (latency: measured on the model's device, cached)
    start_pruning_step: int = 0
    pruning_steps: int = 1
    group_divisible: int | str = 1   # or "auto": resolve_group_divisible per device
    allocation: str = "auto"   # resolve_allocation: "balanced", or "uniform" under target_latency
    total_steps: int | None = None
    fused: bool = True        # the plain base step through torch's fused kernels (otofx.fused)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check(self, "lr", self.lr > 0, "the learning rate must be positive")
        _check(self, "variant", self.variant in VARIANTS, f"must be one of {VARIANTS}")
        _check(self, "momentum", 0 <= self.momentum < 1, "must be in [0, 1)")
        _check(self, "weight_decay", self.weight_decay >= 0, "must be >= 0")
        _check(self, "betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               "must be two numbers in [0, 1)")
        _check(self, "eps", self.eps > 0, "must be positive")
        _check(self, "target_group_sparsity", 0 <= self.target_group_sparsity < 1,
               "is the fraction of prunable channels to remove, in [0, 1)")
        budgets = [n for n in ("target_flops", "target_params", "target_latency")
                   if getattr(self, n) is not None]
        for name in budgets:
            value = getattr(self, name)
            _check(self, name, isinstance(value, (int, float)) and not isinstance(value, bool)
                   and 0 < value <= 1, "is the subnet's cost as a fraction of the dense model's, "
                   "in (0, 1] (pruning cannot make a model cost more than dense), or None")
        if len(budgets) > 1:
            _check(self, budgets[-1], False, f"set one budget, not {' and '.join(budgets)}")
        _check(self, "start_pruning_step", self.start_pruning_step >= 0, "must be >= 0")
        _check(self, "pruning_steps", self.pruning_steps >= 1, "must be >= 1")
        _check(self, "group_divisible", self.group_divisible == "auto" or (
            isinstance(self.group_divisible, int) and not isinstance(self.group_divisible, bool)
            and self.group_divisible >= 1), "must be an int >= 1 (every kept width a multiple "
               "of it) or 'auto' (the multiple the model's device runs fastest: "
               f"{', '.join(f'{d} {n}' for d, n in AUTO_DIVISIBLE.items())})")
        _check(self, "allocation", self.allocation in ALLOCATIONS,
               f"must be one of {ALLOCATIONS}: how many channels each group may lose "
               "('uniform': the same share of every group; 'balanced': one global ranking, every "
               "group keeps at least half the share a uniform prune keeps; 'global': one "
               "ranking, no floor; 'auto': balanced, or uniform under target_latency)")
        _check(self, "fused", isinstance(self.fused, bool),
               "must be True (the base step of parameters no pruning update touches goes "
               "through torch's fused kernels where the device has them) or False")
        if self.total_steps is not None:
            _check(self, "total_steps", self.total_steps >= 1, "must be >= 1")
            _check(self, "pruning_steps",
                   self.start_pruning_step + self.pruning_steps <= self.total_steps,
                   f"the pruning phase (start_pruning_step + pruning_steps = "
                   f"{self.start_pruning_step + self.pruning_steps}) must end within total_steps "
                   f"= {self.total_steps}")

    @property
    def end_pruning_step(self) -> int:
        return self.start_pruning_step + self.pruning_steps

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class DHSPGConfig(_BaseConfig):
    """DHSPG (OTOv2): half-space projection over the channels partitioned as redundant.

    At ``start_pruning_step`` the channels are scored (``partition``: ``"saliency"``, HESSO's five
    normalised saliencies, or ``"reference"``, OTOv2's ``0.5 * normalize(cos(x, d)) + 0.5 *
    normalize(1 / (||x|| / |g|))``) and ``target_group_sparsity + tolerance_group_sparsity`` of
    them become candidates. Each step pulls the candidates towards zero by DHSPG's adaptive
    lambda (defaults per variant as in the reference: sgd 1e-3/2/10, adam 1e-2/20/1e3) or, with
    ``pull="scheduled"`` (default), by at least a schedule-driven lambda that rises while the
    projected count lags a linear ramp to the target at ``fallback_start`` of the phase; a
    candidate that crosses the half-space (``<x^, x> < epsilon ||x||^2``) is projected to
    exactly zero and stays there. Once the target count is zero the other candidates are
    released. ``fallback_start`` (fraction of the phase; None: no fallback) is when the fallback
    takes the candidates the projection has not caught, the fewest needed, and shrinks them
    linearly to zero by the phase's end, so the target is met exactly; the report counts what
    each mechanism zeroed. ``pull="reference"`` is OTOv2's lambda alone.

    Defaults by measurement (DigitsResNet, 12 epochs, test accuracy of the subnet; measured
    while the scheduled pull still scaled every candidate by its group's median norm, before the
    deadlines were spread by rank; ``benchmarks/RESULTS.md`` measures the final code): the scheduled
    pull against OTOv2's alone, load_digits target 0.5: 0.987 (the projection zeroed all 128
    channels) against 0.970 (it zeroed none; the fallback all 128). On noisy-digits (5 paired
    seeds, uniform allocation): ``partition="saliency"`` 0.711 / 0.667 at targets 0.5 / 0.75
    against 0.707 / 0.650 for ``"reference"``; ``fallback_start`` 0.75 against 0.9: 0.711
    against 0.676 at 0.5. ``tolerance_group_sparsity=0.05`` (3 seeds, balanced allocation) kept
    more FLOPs for less accuracy at 0.7 (0.600 at 0.17 of the FLOPs against 0.667 at 0.11), so
    it is off by default.
    """

    pruning_steps: int = 100
    partition: str = "saliency"
    tolerance_group_sparsity: float = 0.0
    pull: str = "scheduled"
    fallback_start: float | None = 0.75
    epsilon: float = 0.0
    lmbda: float | None = None
    lmbda_amplify: float | None = None
    hat_lmbda_coeff: float | None = None

    def validate(self) -> None:
        sgd = self.variant == "sgd"
        if self.lmbda is None:
            self.lmbda = 1e-3 if sgd else 1e-2
        if self.lmbda_amplify is None:
            self.lmbda_amplify = 2.0 if sgd else 20.0
        if self.hat_lmbda_coeff is None:
            self.hat_lmbda_coeff = 10.0 if sgd else 1e3
        super().validate()
        _check(self, "epsilon", 0 <= self.epsilon < 1, "must be in [0, 1)")
        _check(self, "partition", self.partition in ("saliency", "reference"),
               "must be 'saliency' (five normalised saliencies) or 'reference' (OTOv2's cosine "
               "and inverse magnitude)")
        _check(self, "tolerance_group_sparsity", 0 <= self.tolerance_group_sparsity < 1,
               "is the extra share of channels marked as candidates, in [0, 1)")
        _check(self, "pull", self.pull in ("scheduled", "reference"),
               "must be 'scheduled' (lambda rises while the projected count lags the schedule) "
               "or 'reference' (OTOv2's adaptive lambda alone)")
        _check(self, "fallback_start", self.fallback_start is None or 0 < self.fallback_start <= 1,
               "is the fraction of the pruning phase after which the fallback shrinks the "
               "candidates the projection has not caught, in (0, 1], or None (no fallback: the "
               "target may then be missed)")
        _check(self, "lmbda", self.lmbda > 0, "must be positive")
        _check(self, "lmbda_amplify", self.lmbda_amplify >= 1, "must be >= 1")
        _check(self, "hat_lmbda_coeff", self.hat_lmbda_coeff >= 1, "must be >= 1")


@dataclass
class HESSOConfig(_BaseConfig):
    """HESSO (only-train-once 3.x): score, then anneal the lowest channels to zero by periods."""

    pruning_periods: int = 1

    def validate(self) -> None:
        super().validate()
        _check(self, "pruning_periods", 1 <= self.pruning_periods <= self.pruning_steps,
               "must be between 1 and pruning_steps")


@dataclass
class H2SPGConfig(DHSPGConfig):
    """H2SPG (OTOv3): DHSPG's half-space steps over erasable structures (``Analysis.structures``),
    each one group over all its parameters, and over channels too when
    ``target_group_sparsity > 0`` (that share of the prunable channels is pruned outside the
    structures chosen for erasing; the channels inside those go with them).

    ``target_structure_sparsity`` is the fraction of erasable structures to erase (a structure
    nested in an erased one counts as erased); ``target_structures`` an exact count instead.
    Candidates are taken in score order and one that would disconnect an output is skipped;
    when the target cannot be met that way the largest valid count is taken, with a warning.

    With a budget (``target_flops``, ``target_params`` or ``target_latency``) the structures are
    chosen as above, but never so many that erasing them alone costs less than the budget (the
    structure target drops until it does not), and the channels outside them are pruned too
    (``target_group_sparsity`` is then ignored): as many as land the subnet on the budget, priced
    by the cost model with the erased structures' nodes and parameters gone.
    """

    target_group_sparsity: float = 0.0
    target_structure_sparsity: float = 0.5
    target_structures: int | None = None

    def validate(self) -> None:
        super().validate()
        _check(self, "target_structure_sparsity", 0 <= self.target_structure_sparsity <= 1,
               "is the fraction of erasable structures to erase, in [0, 1]")
        if self.target_structures is not None:
            _check(self, "target_structures", isinstance(self.target_structures, int)
                   and not isinstance(self.target_structures, bool) and self.target_structures >= 0,
                   "is the number of structures to erase, an int >= 0 (or None to use "
                   "target_structure_sparsity)")
