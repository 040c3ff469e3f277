"""``DigitsVAE``: a variational autoencoder of the 8x8 digits with a 2-D latent, drawn to TensorBoard each epoch."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from typing_extensions import override

from lightning_opt import AdaLo
from lightning_opt.recipes.digits.data import NUM_CLASSES, NUM_FEATURES

LATENT_TAG = "latent/scatter"
"""TensorBoard image tag of the validation latent means, one image per validation epoch."""

FIGURE_SIZE = (4.8, 4.0)
"""Width and height of the latent picture in inches."""

FIGURE_DPI = 80
"""Dots per inch of the latent picture: 384 x 320 pixels."""


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` in closed form, summed over the last dimension.

    Per coordinate it is ``(mu**2 + exp(logvar) - 1 - logvar) / 2`` nats.

    Args:
        mu: means of the approximate posterior, shape ``(..., latent_dim)``.
        logvar: log-variances, same shape.

    Returns:
        One KL value per example, shape ``(...)``.

    Example:
        >>> kl_to_standard_normal(torch.zeros(3, 2), torch.zeros(3, 2))  # the prior itself
        tensor([0., 0., 0.])
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def bernoulli_reconstruction(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative Bernoulli log-likelihood (binary cross-entropy) of ``targets``, summed over the pixels.

    The targets are grey levels in [0, 1], not bits: the cross-entropy is still the usual VAE
    reconstruction term, but it is not a normalised likelihood of a continuous image and its minimum is
    the targets' own entropy, not zero (see :class:`DigitsVAE`).

    Args:
        logits: decoder outputs, shape ``(batch, pixels)``.
        targets: the images, same shape, values in [0, 1].

    Returns:
        One value per image, shape ``(batch,)``.

    Example:
        >>> bernoulli_reconstruction(torch.zeros(1, 64), torch.ones(1, 64))  # 64 pixels at p = 1/2
        tensor([44.3614])
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=-1)


def render_latent_scatter(latents: torch.Tensor, labels: torch.Tensor, title: str = "") -> np.ndarray:
    """Draw 2-D latent points coloured by digit and return the picture as ``(height, width, 3)`` uint8 RGB.

    Uses matplotlib's Agg canvas directly (no pyplot, no display, no global figure to close).

    Args:
        latents: shape ``(N, 2)`` (extra columns are ignored).
        labels: the digit of each point, shape ``(N,)``, values 0 to 9.
        title: optional title above the axes.

    Example:
        >>> render_latent_scatter(torch.randn(20, 2), torch.arange(20) % 10).shape
        (320, 384, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = latents.detach().to("cpu", torch.float32).numpy()
    digits = labels.detach().cpu().numpy()
    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = [f"C{digit}" for digit in range(NUM_CLASSES)]  # matplotlib's default cycle is tab10
    for digit in range(NUM_CLASSES):
        chosen = digits == digit
        axes.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colours[digit], label=str(digit), linewidths=0)
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, frameon=False, title="digit")
    axes.set_xlabel("z[0] (mean)", fontsize=8)
    axes.set_ylabel("z[1] (mean)", fontsize=8)
    axes.tick_params(labelsize=7)
    if title:
        axes.set_title(title, fontsize=8)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class DigitsVAE(pl.LightningModule):
    """A VAE of the 8x8 digits with a 2-D latent, so that the optimizer's result can be looked at.

    Encoder: ``Linear -> Tanh`` per hidden layer, then one ``Linear`` to ``(mu, logvar)``; decoder: the
    mirror image, ending in 64 logits. No normalisation layers, as in the digits classifier. Tanh rather
    than the classifier's ReLU: with ReLU, one of the two latent coordinates often ended up unused (its
    ``mu`` constant, its posterior equal to the prior) with AdaLo and with AdamW alike, depending on the
    seed; with Tanh and a short KL warm-up both stayed in use for every seed tried. Training samples
    ``z = mu + exp(logvar / 2) * noise`` (the reparameterisation trick) and minimises
    ``loss = recon + w * kl`` (``w = beta`` after the warm-up: the negative ELBO for ``beta = 1``) with,
    per image:

    - ``recon``: the binary cross-entropy of the 64 pixels (grey levels in [0, 1]) against the decoder's
      logits, **summed** over the pixels. This is a Bernoulli likelihood applied to grey levels, the
      classic choice for MNIST-like data; it is not normalised for continuous values (the continuous
      Bernoulli would be), so ``recon`` is bounded below by the images' entropy rather than by zero, but
      its gradient pulls each pixel's mean towards its grey level, which is what the picture needs.
    - ``kl``: the closed-form ``KL(q(z | x) || N(0, I))`` (:func:`kl_to_standard_normal`).

    Both are averaged over the batch. During the first ``kl_warmup_epochs`` epochs the KL weight ``w``
    grows linearly from 0 to ``beta`` (see :meth:`kl_weight`), which keeps the encoder from settling early
    on the prior. Logged per epoch: ``train_recon``, ``train_kl``, ``train_loss``,
    ``val_recon``, ``val_kl``, ``val_loss`` (the digits recipe's naming, so ``lightning-opt fit`` reports
    ``val_loss``). ``train_loss`` is what was minimised (with the warm-up's weight); ``val_loss`` always uses
    the full ``beta``. The validation terms also sample ``z``: for ``beta = 1`` ``val_loss`` is a one-sample
    estimate of the negative ELBO.

    After each validation epoch (not the sanity check) the validation images' latent means, coloured by
    digit, are drawn with matplotlib and written to every :class:`~lightning.pytorch.loggers.TensorBoardLogger`
    of the trainer under ``latent/scatter``, on global rank zero only; without such a logger nothing is
    drawn. Under data parallelism the picture shows rank zero's share of the validation set.

    On its own it trains with :class:`~lightning_opt.AdaLo` at its defaults (add a
    :class:`~lightning_opt.LossFeeder` to the Trainer); LightningCLI's ``--optimizer`` replaces that.

    Args:
        hidden_dims: width of each encoder hidden layer, input side first; the decoder uses them reversed.
        latent_dim: size of ``z``, at least 2; the picture shows its first two coordinates.
        beta: weight of the KL term (1 is the plain ELBO).
        kl_warmup_epochs: epochs over which the KL weight rises linearly from 0 to ``beta``; 0 for none.
        plot_latents: draw the latent picture after each validation epoch.

    Example:
        >>> model = DigitsVAE(hidden_dims=(32,))
        >>> logits, mu, logvar = model(torch.rand(5, 64))
        >>> logits.shape, mu.shape, logvar.shape
        (torch.Size([5, 64]), torch.Size([5, 2]), torch.Size([5, 2]))
    """

    def __init__(
        self,
        hidden_dims: Sequence[int] = (128, 64),
        latent_dim: int = 2,
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        plot_latents: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_dims, (list, tuple)) or not hidden_dims or any(
            isinstance(width, bool) or not isinstance(width, int) or width < 1 for width in hidden_dims
        ):
            raise ValueError(f"Invalid hidden_dims: {hidden_dims!r} (expected one or more positive integers)")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 2:
            raise ValueError(f"Invalid latent_dim: {latent_dim!r} (expected an integer >= 2)")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
            raise ValueError(f"Invalid beta: {beta!r} (expected a finite number >= 0)")
        if isinstance(kl_warmup_epochs, bool) or not isinstance(kl_warmup_epochs, int) or kl_warmup_epochs < 0:
            raise ValueError(f"Invalid kl_warmup_epochs: {kl_warmup_epochs!r} (expected an integer >= 0)")
        if not isinstance(plot_latents, bool):
            raise ValueError(f"Invalid plot_latents: {plot_latents!r} (expected True or False)")
        hidden_dims = tuple(hidden_dims)
        self.save_hyperparameters()
        self.latent_dim = latent_dim
        self.beta = float(beta)
        self.kl_warmup_epochs = kl_warmup_epochs
        self.plot_latents = plot_latents
        self.encoder = _mlp((NUM_FEATURES, *hidden_dims), 2 * latent_dim)
        self.decoder = _mlp((latent_dim, *reversed(hidden_dims)), NUM_FEATURES)
        self._val_latents: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    # ----------------------------------------------------------------- the model
    def encode(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, logvar)``, each of shape ``(batch, latent_dim)``, of images of shape ``(batch, 64)``."""
        mu, logvar = self.encoder(inputs).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Return the 64 pixel logits, shape ``(batch, 64)``, of latents of shape ``(batch, latent_dim)``."""
        return self.decoder(latents)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Sample ``z ~ N(mu, exp(logvar))`` as ``mu + exp(logvar / 2) * noise``, differentiable in both."""
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    @override
    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample one ``z`` per image and decode: ``(pixel logits, mu, logvar)``."""
        mu, logvar = self.encode(inputs)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def loss_terms(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon, kl, mu)``: the batch means of the two terms of the loss, and the latent means."""
        logits, mu, logvar = self(inputs)
        return bernoulli_reconstruction(logits, inputs).mean(), kl_to_standard_normal(mu, logvar).mean(), mu

    def kl_weight(self) -> float:
        """The weight of ``kl`` in the training loss now: ``beta``, ramped up linearly during the warm-up.

        In epoch ``e`` (from 0) it is ``beta * min(1, e / kl_warmup_epochs)``: 0 in the first epoch, ``beta``
        from epoch ``kl_warmup_epochs`` on.
        """
        if self.kl_warmup_epochs == 0 or self._trainer is None:
            return self.beta
        return self.beta * min(1.0, self.current_epoch / self.kl_warmup_epochs)

    # ----------------------------------------------------------------- Lightning
    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, _ = batch
        recon, kl, _ = self.loss_terms(inputs)
        loss = recon + self.kl_weight() * kl
        self.log_dict({"train_recon": recon, "train_kl": kl}, on_step=False, on_epoch=True)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    @override
    def on_validation_epoch_start(self) -> None:
        self._val_latents.clear()
        self._val_labels.clear()

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, labels = batch
        recon, kl, mu = self.loss_terms(inputs)
        self.log_dict({"val_recon": recon, "val_kl": kl})
        self.log("val_loss", recon + self.beta * kl, prog_bar=True)  # the full beta, also during a KL warm-up
        if self._latent_loggers():
            self._val_latents.append(mu.detach().cpu())
            self._val_labels.append(labels.detach().cpu())

    @override
    def on_validation_epoch_end(self) -> None:
        loggers = self._latent_loggers()
        if loggers and self._val_latents:
            optimizers = self.trainer.optimizers
            name = f"{type(optimizers[0]).__name__}, " if optimizers else ""
            title = f"{name}epoch {self.current_epoch}, step {self.global_step}"
            picture = render_latent_scatter(torch.cat(self._val_latents), torch.cat(self._val_labels), title)
            for logger in loggers:
                logger.experiment.add_image(LATENT_TAG, picture, global_step=self.global_step, dataformats="HWC")
        self._val_latents.clear()
        self._val_labels.clear()

    def _latent_loggers(self) -> list[TensorBoardLogger]:
        """The TensorBoard loggers to draw to now: none off rank zero, in the sanity check or when disabled."""
        trainer = self._trainer  # None outside a Trainer (self.trainer would raise)
        if not self.plot_latents or trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return []
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return AdaLo(self.parameters())


def _mlp(widths: Sequence[int], out_features: int) -> nn.Sequential:
    """``Linear -> Tanh`` between consecutive ``widths``, then a last ``Linear`` to ``out_features``."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out), nn.Tanh()]
    layers.append(nn.Linear(widths[-1], out_features))
    return nn.Sequential(*layers)
