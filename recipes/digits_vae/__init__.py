"""A variational autoencoder of the 8x8 digits with a 2-D latent, whose picture shows what the optimizer did.

The data is the digits recipe's (same images, same stratified split; the labels only colour the picture).

Example::

    lightning-opt fit --config configs/digits_vae_adalo.yaml   # AdaLo, fed by LossFeeder
    lightning-opt fit --config configs/digits_vae_adamw.yaml   # torch.optim.AdamW
    python -m lightning_opt.recipes.digits_vae.export_latents logs/digits_vae_adalo latent.png
"""

from lightning_opt.recipes.digits.data import DigitsDataModule
from lightning_opt.recipes.digits_vae.model import (
    DigitsVAE,
    bernoulli_reconstruction,
    kl_to_standard_normal,
    render_latent_scatter,
)

__all__ = [
    "DigitsDataModule",
    "DigitsVAE",
    "bernoulli_reconstruction",
    "kl_to_standard_normal",
    "render_latent_scatter",
]
