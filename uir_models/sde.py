"""IR-SDE: the mean-reverting SDE of Luo et al. (ICML 2023), used by DA-CLIP's diffusion restorer.

The forward process pulls a clean image ``x_0`` (the HQ) towards the degraded one ``mu`` (the
LQ) while adding noise::

    dx = theta_t (mu - x) dt + sigma_t dW,    sigma_t^2 / theta_t = 2 * max_sigma^2

so every ``x_t`` is Gaussian with a closed form (an Ornstein-Uhlenbeck process)::

    x_t ~ N(mu_bar_t, sigma_bar_t^2),
    mu_bar_t    = mu + (x_0 - mu) * exp(-theta_bar_t * dt)
    sigma_bar_t = max_sigma * sqrt(1 - exp(-2 * theta_bar_t * dt))

with ``theta_bar_t`` the cumulative sum of the theta schedule. ``dt`` is chosen so that
``exp(-theta_bar_T * dt) = eps``: at ``t = T`` only ``eps`` of the HQ-LQ difference is left and
``x_T`` is (nearly) the stationary state ``LQ + N(0, max_sigma^2)``, which restoration starts from.

The network predicts the noise of ``x_t``; the score is ``-noise / sigma_bar_t``. Training uses
the paper's "maximum likelihood" matching loss: the L1 distance between the Euler-Maruyama mean
of the reverse-time SDE step ``x_t -> x_{t-1}`` (computed from the predicted noise) and the
optimum reverse state ``x*_{t-1}``, the mean of ``p(x_{t-1} | x_t, x_0)``, known in closed form
because ``x_0`` is known in training.

Formulas checked against the reference implementation (``utils/sde_utils.py`` of
Algolzw/image-restoration-sde and Algolzw/daclip-uir: cosine theta schedule, ``dt`` from ``eps``,
``reverse_optimum_step``, ``reverse_optimum_std``, ``reverse_sde_step``); the code is our own.
The module is pure torch and knows nothing of the network beyond the call
``model(x_t, lq, t) -> noise`` (the caller closes over any conditioning).

Images are in [0, 1]; ``max_sigma`` is configured on the 0-255 scale (50 in the paper) and
divided by 255. Schedule tables are kept in float64 on the CPU and cast per call, so the same
object serves float32 CPU and CUDA tensors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from uir_models.config_keys import check_keys

NoiseModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(x_t, lq, t) -> predicted noise``; ``t`` is a float tensor of timesteps, shape (B,)."""

SCHEDULES = ("cosine", "linear", "constant")
SAMPLERS = ("posterior", "sde")


@dataclass(frozen=True)
class SdeConfig:
    """IR-SDE settings; the paper's (DA-CLIP ``train.yml``): max_sigma 50, T 100, cosine, 0.005.

    ``max_sigma`` is on the 0-255 scale, as the paper states it; the SDE works on [0, 1] images
    and uses ``max_sigma / 255``. Unknown keys are rejected so a typo fails loudly.
    """

    max_sigma: float = 50.0
    steps: int = 100
    schedule: str = "cosine"
    eps: float = 0.005

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SdeConfig:
        check_keys(cls, values, "SDE config")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.max_sigma > 0:
            raise ValueError(f"max_sigma must be > 0 (0-255 scale), got {self.max_sigma}")
        if self.steps < 1:
            raise ValueError(f"steps (T) must be >= 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown theta schedule {self.schedule!r}; known: {SCHEDULES}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")


def theta_schedule(name: str, steps: int) -> torch.Tensor:
    """Theta for t = 0..T (float64, length T+1); index 0 only anchors the cumulative sum.

    ``cosine`` is the reference's: ``1 - alpha_bar`` of the improved-DDPM cosine schedule on a
    grid of T+2 intervals (s = 0.008), truncated at both ends, so theta grows from ~0 to ~1.
    """
    if name == "cosine":
        n = steps + 2
        s = 0.008
        x = torch.linspace(0, n, n + 1, dtype=torch.float64)
        alphas_cumprod = torch.cos(((x / n) + s) / (1 + s) * math.pi * 0.5) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        return 1 - alphas_cumprod[1:-1]
    if name == "linear":
        scale = 1000 / (steps + 1)
        return torch.linspace(scale * 1e-4, scale * 0.02, steps + 1, dtype=torch.float64)
    if name == "constant":
        return torch.ones(steps + 1, dtype=torch.float64)
    raise ValueError(f"unknown theta schedule {name!r}; known: {SCHEDULES}")


def _as_timesteps(t: int | torch.Tensor, batch: int) -> torch.Tensor:
    """Timesteps as a CPU int64 tensor of shape (batch,): ints, 0-d or (B,) tensors accepted."""
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError("timesteps must be integers (IR-SDE is defined on the grid 0..T)")
        t = t.detach().to("cpu", torch.int64).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {batch}")
        return t
    return torch.full((batch,), int(t), dtype=torch.int64)


class IRSDE:
    """The mean-reverting SDE: schedule, forward noising, matching loss and restoration.

    Attributes (float64 CPU tensors indexed by t = 0..T): ``thetas``, ``sigmas``,
    ``thetas_cumsum`` (0 at t = 0), ``sigma_bars``; scalars ``T``, ``dt``, ``max_sigma`` (on
    the [0, 1] scale).
    """

    def __init__(self, config: SdeConfig | None = None) -> None:
        cfg = config or SdeConfig()
        cfg.validate()
        self.config = cfg
        self.T = cfg.steps
        self.max_sigma = cfg.max_sigma / 255.0
        thetas = theta_schedule(cfg.schedule, cfg.steps)
        self.thetas = thetas
        # sigma_t^2 = 2 max_sigma^2 theta_t keeps the stationary variance at max_sigma^2.
        self.sigmas = torch.sqrt(2 * self.max_sigma**2 * thetas)
        # The reference subtracts theta_0 so that theta_bar_0 = 0 (x_0 is the HQ itself).
        self.thetas_cumsum = torch.cumsum(thetas, 0) - thetas[0]
        # dt such that exp(-theta_bar_T dt) = eps: the HQ-LQ gap has decayed to eps at t = T.
        self.dt = float(-math.log(cfg.eps) / self.thetas_cumsum[-1])
        self.sigma_bars = self.max_sigma * torch.sqrt(
            1 - torch.exp(-2 * self.thetas_cumsum * self.dt)
        )

    # ---------------------------------------------------------------- coefficients

    def _coef(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` shaped (B, 1, 1, ...) to broadcast over ``like``, in its dtype/device."""
        values = table[t]
        return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def decay(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``exp(-theta_bar_t dt)``: the fraction of ``x_0 - mu`` left in the mean at step t."""
        t = _as_timesteps(t, like.shape[0])
        return self._coef(torch.exp(-self.thetas_cumsum * self.dt), t, like)

    def mu_bar(self, x0: torch.Tensor, mu: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Mean of ``x_t`` given ``x_0`` (HQ) and ``mu`` (LQ): ``mu + (x0 - mu) decay_t``."""
        return mu + (x0 - mu) * self.decay(t, x0)

    def sigma_bar(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Standard deviation of ``x_t`` given ``x_0``, shaped to broadcast over ``like``."""
        return self._coef(self.sigma_bars, _as_timesteps(t, like.shape[0]), like)

    # ---------------------------------------------------------------- forward process

    def sample_timesteps(
        self, batch: int, device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Training timesteps, uniform in 1..T, int64 of shape (batch,) on ``device``."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(1, self.T + 1, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    def noisy_state(
        self, hq: torch.Tensor, lq: torch.Tensor, t: int | torch.Tensor,
        noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``x_t = mu_bar_t + sigma_bar_t * noise`` (noise ~ N(0, I) unless given)."""
        if noise is None:
            noise = _randn_like(hq, generator)
        return self.mu_bar(hq, lq, t) + self.sigma_bar(t, hq) * noise

    def stationary_state(
        self, lq: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``LQ + N(0, max_sigma^2)``: the mean-reverting end state restoration starts from."""
        return lq + self.max_sigma * _randn_like(lq, generator)

    def true_noise(
        self, x_t: torch.Tensor, hq: torch.Tensor, lq: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """The noise that makes ``x_t`` from ``hq``: the regression target (and an oracle)."""
        return (x_t - self.mu_bar(hq, lq, t)) / self.sigma_bar(t, x_t)

    def score_from_noise(self, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Score of ``p(x_t | x_0)`` from the noise: ``-noise / sigma_bar_t``."""
        return -noise / self.sigma_bar(t, noise)

    def x0_from_noise(
        self, x_t: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """Invert ``x_t = mu_bar_t(x_0) + sigma_bar_t noise`` for ``x_0`` (the HQ estimate)."""
        return lq + (x_t - lq - self.sigma_bar(t, x_t) * noise) / self.decay(t, x_t)

    # ---------------------------------------------------------------- reverse process

    def _posterior_coefs(
        self, t: torch.Tensor, s: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weights of ``x_t``, ``x_0`` and the std of ``p(x_s | x_t, x_0)`` for s < t.

        With ``A = e^{-(theta_bar_t - theta_bar_s) dt}`` (the OU decay from s to t),
        ``C = e^{-theta_bar_s dt}`` and ``B = A C = e^{-theta_bar_t dt}``, the Gaussian
        posterior has mean ``mu + A(1-C^2)/(1-B^2) (x_t - mu) + C(1-A^2)/(1-B^2) (x_0 - mu)``
        and variance ``max_sigma^2 (1-A^2)(1-C^2)/(1-B^2)``. For s = t - 1 this is the
        reference's ``reverse_optimum_step`` / ``reverse_optimum_std``; other s give exact
        jumps over several steps (for sampling with fewer steps). Computed in float64.
        """
        if bool((s >= t).any()) or bool((s < 0).any()) or bool((t > self.T).any()):
            raise ValueError("posterior needs 0 <= s < t <= T")
        cum = self.thetas_cumsum
        a = torch.exp(-(cum[t] - cum[s]) * self.dt)
        c = torch.exp(-cum[s] * self.dt)
        b = a * c
        denom = 1 - b**2
        w_t = a * (1 - c**2) / denom
        w_0 = c * (1 - a**2) / denom
        std = self.max_sigma * torch.sqrt((1 - a**2) * (1 - c**2) / denom)
        shape = (-1, *([1] * (like.dim() - 1)))
        return tuple(v.to(like.device, like.dtype).reshape(shape) for v in (w_t, w_0, std))

    def optimal_reverse_state(
        self, x_t: torch.Tensor, hq: torch.Tensor, lq: torch.Tensor, t: int | torch.Tensor,
        s: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x*_s``, the mean of ``p(x_s | x_t, x_0 = hq)``; ``s`` defaults to ``t - 1``.

        At t = 1 it is exactly ``hq``. Both weights are in [0, 1]; from the noiseless state
        ``x_t = mu_bar_t`` it is exactly ``mu_bar_s``, one step closer to the HQ.
        """
        tt = _as_timesteps(t, x_t.shape[0])
        ss = tt - 1 if s is None else _as_timesteps(s, x_t.shape[0])
        w_t, w_0, _ = self._posterior_coefs(tt, ss, x_t)
        return lq + w_t * (x_t - lq) + w_0 * (hq - lq)

    def posterior_std(
        self, t: int | torch.Tensor, like: torch.Tensor, s: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Std of ``p(x_s | x_t, x_0)`` (s defaults to t - 1); zero when s = 0."""
        tt = _as_timesteps(t, like.shape[0])
        ss = tt - 1 if s is None else _as_timesteps(s, like.shape[0])
        return self._posterior_coefs(tt, ss, like)[2]

    def reverse_sde_mean(
        self, x_t: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """Mean of one Euler-Maruyama step of the reverse-time SDE, ``x_t -> x_{t-1}``.

        ``x_t - [theta_t (mu - x_t) - sigma_t^2 score] dt`` with ``score = -noise/sigma_bar_t``.
        """
        tt = _as_timesteps(t, x_t.shape[0])
        theta = self._coef(self.thetas, tt, x_t)
        sigma2 = self._coef(self.sigmas**2, tt, x_t)
        score = self.score_from_noise(noise, tt)
        return x_t - (theta * (lq - x_t) - sigma2 * score) * self.dt

    def reverse_sde_step(
        self, x_t: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One Euler-Maruyama reverse step: the mean plus ``sigma_t sqrt(dt) z``."""
        sigma = self._coef(self.sigmas, _as_timesteps(t, x_t.shape[0]), x_t)
        mean = self.reverse_sde_mean(x_t, lq, noise, t)
        return mean + sigma * math.sqrt(self.dt) * _randn_like(x_t, generator)

    def posterior_step(
        self, x_t: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor, t: int,
        s: int | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Posterior sampling step ``x_t -> x_s``: estimate ``x_0`` from the noise, then draw
        from ``p(x_s | x_t, x_0)``. The step to s = 0 is deterministic (zero std)."""
        s = t - 1 if s is None else s
        x0 = self.x0_from_noise(x_t, lq, noise, t)
        tt = _as_timesteps(t, x_t.shape[0])
        w_t, w_0, std = self._posterior_coefs(tt, _as_timesteps(s, x_t.shape[0]), x_t)
        mean = lq + w_t * (x_t - lq) + w_0 * (x0 - lq)
        if s == 0:
            return mean
        return mean + std * _randn_like(x_t, generator)

    # ---------------------------------------------------------------- training and sampling

    def training_loss(
        self, model: NoiseModel, hq: torch.Tensor, lq: torch.Tensor,
        t: int | torch.Tensor | None = None, noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L1 matching loss between the reverse-SDE mean from the predicted noise and ``x*_{t-1}``.

        ``t`` (default: uniform in 1..T per sample) and ``noise`` (default: N(0, I)) are drawn
        from ``generator``, or the global RNG of the images' device. ``model(x_t, lq, t)`` gets
        ``t`` as a float tensor (B,). Averaged per sample then over the batch, as the reference
        ``MatchingLoss`` (unweighted). Even a perfect noise predictor leaves a small floor: the
        Euler-Maruyama mean is a first-order approximation of the exact posterior mean.
        """
        batch = hq.shape[0]
        if t is None:
            t = self.sample_timesteps(batch, hq.device, generator)
        tt = _as_timesteps(t, batch)
        if noise is None:
            noise = _randn_like(hq, generator)
        x_t = self.noisy_state(hq, lq, tt, noise)
        predicted = model(x_t, lq, tt.to(device=hq.device, dtype=hq.dtype))
        expected = self.reverse_sde_mean(x_t, lq, predicted, tt)
        optimum = self.optimal_reverse_state(x_t, hq, lq, tt)
        return F.l1_loss(expected, optimum)

    def timesteps_for(self, steps: int | None = None) -> list[int]:
        """Decreasing timesteps T = t_0 > ... > t_n = 0 visited by :meth:`restore`, n = steps."""
        n = self.T if steps is None else int(steps)
        if not 1 <= n <= self.T:
            raise ValueError(f"steps must be in 1..{self.T}, got {n}")
        grid = torch.linspace(self.T, 0, n + 1, dtype=torch.float64).round().long().tolist()
        return grid

    @torch.no_grad()
    def restore(
        self, model: NoiseModel, lq: torch.Tensor, steps: int | None = None,
        generator: torch.Generator | None = None, sampler: str = "posterior",
        x_T: torch.Tensor | None = None, clamp: bool = True,
    ) -> torch.Tensor:
        """Restore ``lq`` by running the reverse process from ``x_T = LQ + max_sigma noise``.

        ``sampler="posterior"`` (default) draws each ``x_s`` from ``p(x_s | x_t, x0_hat)`` with
        ``x0_hat`` from the predicted noise; ``steps < T`` visits an evenly spaced subset of
        the training timesteps and jumps between them with the exact multi-step posterior, so
        the network only ever sees timesteps it was trained on. ``sampler="sde"`` is the
        Euler-Maruyama reverse SDE that DA-CLIP's test script uses; it needs all T steps.
        The result is clamped to [0, 1] unless ``clamp`` is False.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")
        if sampler == "sde" and steps not in (None, self.T):
            raise ValueError("the Euler-Maruyama sampler only runs all T steps; use 'posterior'")
        x = self.stationary_state(lq, generator) if x_T is None else x_T.clone()
        batch = lq.shape[0]
        times = self.timesteps_for(steps)
        for t, s in itertools.pairwise(times):
            t_model = torch.full((batch,), float(t), device=lq.device, dtype=lq.dtype)
            noise = model(x, lq, t_model)
            if sampler == "sde":
                x = self.reverse_sde_step(x, lq, noise, t, generator)
            else:
                x = self.posterior_step(x, lq, noise, t, s, generator)
        return x.clamp(0, 1) if clamp else x


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) shaped like ``x``; drawn on the generator's device, then moved to ``x``'s."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)
