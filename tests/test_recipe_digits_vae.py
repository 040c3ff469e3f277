"""The digits VAE recipe: its loss terms against direct computations, gradients, argument checks, and a short
real fit through ``lightning-opt fit --config configs/digits_vae_adalo.yaml`` whose TensorBoard event file is
read back (one latent picture per validation epoch, the loss scalars) and exported to a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_opt import AdaLo
from lightning_opt.cli import main
from lightning_opt.factories import NORM_TYPES
from lightning_opt.recipes.digits import DigitsDataModule
from lightning_opt.recipes.digits_vae import DigitsVAE, bernoulli_reconstruction, kl_to_standard_normal
from lightning_opt.recipes.digits_vae.export_latents import export_last_image
from lightning_opt.recipes.digits_vae.export_latents import main as export_main
from lightning_opt.recipes.digits_vae.model import FIGURE_DPI, FIGURE_SIZE, LATENT_TAG

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EPOCHS = 3
STEPS_PER_EPOCH = 45  # 1437 training images in batches of 32
WIDTH, HEIGHT = (round(inches * FIGURE_DPI) for inches in FIGURE_SIZE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------- the loss terms
def test_kl_equals_the_closed_form_of_torch_distributions_and_a_float64_monte_carlo_estimate() -> None:
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    logvar = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    posterior = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))

    kl = kl_to_standard_normal(mu, logvar)

    assert kl.shape == (3,) and kl.dtype == torch.float64
    direct = torch.distributions.kl_divergence(posterior, prior).sum(dim=-1)
    torch.testing.assert_close(kl, direct, rtol=1e-12, atol=1e-12)
    # KL = E_q[log q(z) - log p(z)], estimated from 200k samples per example
    torch.manual_seed(0)
    samples = posterior.sample((200_000,))
    log_ratios = (posterior.log_prob(samples) - prior.log_prob(samples)).sum(dim=-1)
    standard_error = log_ratios.std(dim=0) / log_ratios.shape[0] ** 0.5
    assert ((log_ratios.mean(dim=0) - kl).abs() < 5 * standard_error).all()
    # the prior itself costs nothing, anything else costs something
    assert kl_to_standard_normal(torch.zeros(2), torch.zeros(2)) == 0.0
    assert (kl > 0).all()


def test_reconstruction_is_the_bernoulli_negative_log_likelihood_summed_over_pixels() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 64, generator=generator, dtype=torch.float64) * 3
    targets = torch.rand(4, 64, generator=generator, dtype=torch.float64)
    probabilities = torch.sigmoid(logits)

    expected = -(targets * probabilities.log() + (1 - targets) * (1 - probabilities).log()).sum(dim=-1)

    torch.testing.assert_close(bernoulli_reconstruction(logits, targets), expected)
    # confident wrong logits stay finite (computed from the logits, not from rounded probabilities)
    assert bernoulli_reconstruction(torch.full((1, 64), 100.0), torch.zeros(1, 64)).item() == pytest.approx(6400)


def test_loss_terms_are_differentiable_in_float64() -> None:
    generator = torch.Generator().manual_seed(2)
    mu, logvar, logits = (
        torch.randn(2, 2, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 2, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 64, generator=generator, dtype=torch.float64, requires_grad=True),
    )
    targets = torch.rand(2, 64, generator=generator, dtype=torch.float64)

    assert torch.autograd.gradcheck(kl_to_standard_normal, (mu, logvar))
    assert torch.autograd.gradcheck(lambda x: bernoulli_reconstruction(x, targets), (logits,))


@pytest.mark.parametrize("fill", [None, 0.0, 1.0], ids=["digits", "all-black", "all-white"])
def test_loss_is_finite_and_reaches_every_parameter(fill: float | None) -> None:
    torch.manual_seed(0)
    model = DigitsVAE()
    images = torch.rand(8, 64) if fill is None else torch.full((8, 64), fill)

    recon, kl, mu = model.loss_terms(images)
    loss = recon + model.beta * kl
    loss.backward()

    assert torch.isfinite(loss) and recon > 0 and kl >= 0 and mu.shape == (8, 2)
    first_layer_weight = model.encoder[0].weight  # its gradient is (error x input): zero for a black image
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0 or (fill == 0.0 and parameter is first_layer_weight), name


def test_model_is_an_mlp_without_normalisation_that_trains_with_adalo_by_default() -> None:
    model = DigitsVAE(hidden_dims=(32, 16), latent_dim=3)
    logits, mu, logvar = model(torch.rand(5, 64))

    assert logits.shape == (5, 64) and mu.shape == logvar.shape == (5, 3)
    assert not any(isinstance(module, NORM_TYPES) for module in model.modules())
    widths = [module.out_features for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert widths == [32, 16, 6, 16, 32, 64]  # encoder to (mu, logvar), then the mirrored decoder
    assert type(model.configure_optimizers()) is AdaLo
    assert model.kl_weight() == 1.0  # no trainer, no warm-up


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"hidden_dims": ()}, "hidden_dims"),
        ({"hidden_dims": (32, 0)}, "hidden_dims"),
        ({"latent_dim": 1}, "latent_dim"),
        ({"latent_dim": 2.0}, "latent_dim"),
        ({"beta": -0.1}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"kl_warmup_epochs": -1}, "kl_warmup_epochs"),
        ({"plot_latents": 1}, "plot_latents"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid {argument}: "):
        DigitsVAE(**kwargs)


# ----------------------------------------------------------------- a real fit, read back
@pytest.fixture(scope="module")
def adalo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three full epochs of ``configs/digits_vae_adalo.yaml`` (about 3 s), logged under a temporary directory."""
    root = tmp_path_factory.mktemp("vae_logs")
    before = torch.get_num_threads()
    status = main(
        [
            "fit",
            "--config",
            str(CONFIGS / "digits_vae_adalo.yaml"),
            f"--trainer.logger.save_dir={root}",
            "--trainer.accelerator=cpu",  # the config leaves it to Lightning ("auto"): a GPU if there is one
            f"--trainer.max_epochs={EPOCHS}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    torch.set_num_threads(before)  # the config's num_threads: 1 applies to the whole process
    assert status == 0
    return root / "digits_vae_adalo" / "version_0"


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_fit_logs_one_latent_picture_per_validation_epoch(adalo_run: Path) -> None:
    events = read_events(adalo_run)

    assert events.Tags()["images"] == [LATENT_TAG]  # not drawn during the sanity check
    images = events.Images(LATENT_TAG)
    assert [image.step for image in images] == [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    assert all((image.width, image.height) == (WIDTH, HEIGHT) for image in images)
    assert all(image.encoded_image_string.startswith(PNG_SIGNATURE) for image in images)
    assert len({image.encoded_image_string for image in images}) == EPOCHS  # the latents moved


def test_fit_logs_recon_kl_and_loss_per_epoch_and_the_loss_decreases(adalo_run: Path) -> None:
    events = read_events(adalo_run)
    scalars = {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    names = [f"{stage}_{term}" for stage in ("train", "val") for term in ("recon", "kl", "loss")]
    assert set(names) <= set(scalars)
    assert all(len(scalars[name]) == EPOCHS for name in names)
    assert all(value >= 0 for name in names for value in scalars[name])
    for stage in ("train", "val"):
        recon, loss = scalars[f"{stage}_recon"], scalars[f"{stage}_loss"]
        assert all(later < earlier for earlier, later in zip(recon, recon[1:])), (stage, recon)
        assert all(later < earlier for earlier, later in zip(loss, loss[1:])), (stage, loss)
        assert recon[-1] < recon[0] - 2.0  # nats per image; AdaLo's loss average is still warming up
    # The KL starts near 0 (an untrained encoder outputs mu ~ 0, logvar ~ 0: the prior) and grows as the
    # latents become informative, so it is the loss, not the KL, that must fall. The validation loss uses
    # the full beta; the training loss the warm-up's weight epoch / 30 (configs/digits_vae_adalo.yaml).
    for epoch in range(EPOCHS):
        assert scalars["val_loss"][epoch] == pytest.approx(scalars["val_recon"][epoch] + scalars["val_kl"][epoch])
        expected = scalars["train_recon"][epoch] + epoch / 30 * scalars["train_kl"][epoch]
        assert scalars["train_loss"][epoch] == pytest.approx(expected, rel=1e-5)


def test_export_writes_the_last_picture_and_reports_the_final_scalars(
    adalo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "images" / "latent.png"

    assert export_main([str(adalo_run.parent), str(out)]) == 0  # a directory above the run is enough

    last = read_events(adalo_run).Images(LATENT_TAG)[-1]
    assert out.read_bytes() == last.encoded_image_string
    printed = capsys.readouterr().out
    assert f"at step {STEPS_PER_EPOCH * EPOCHS}" in printed and "val_recon" in printed and "val_kl" in printed
    run_dir, step, scalars = export_last_image(adalo_run, out)
    assert run_dir == adalo_run and step == last.step and set(scalars) == {"val_recon", "val_kl", "val_loss"}


def test_export_fails_clearly_without_events_or_without_the_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_main([str(tmp_path), str(tmp_path / "out.png")]) == 1
    assert "no TensorBoard event file" in capsys.readouterr().err

    logger = TensorBoardLogger(tmp_path, name="scalars_only")
    logger.log_metrics({"val_loss": 1.0}, step=0)
    logger.finalize("success")
    assert export_main([str(tmp_path), str(tmp_path / "out.png")]) == 1
    assert f"no image tagged '{LATENT_TAG}'" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("case", ["no-logger", "csv-logger", "plot_latents=False"])
def test_no_picture_and_no_crash_without_a_tensorboard_logger(tmp_path: Path, case: str) -> None:
    logger: Any = {
        "no-logger": False,
        "csv-logger": CSVLogger(tmp_path),
        "plot_latents=False": TensorBoardLogger(tmp_path, name="tb"),
    }[case]
    model = DigitsVAE(hidden_dims=(16,), plot_latents=case != "plot_latents=False")
    trainer = pl.Trainer(
        logger=logger,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))

    assert torch.isfinite(trainer.callback_metrics["val_loss"])
    assert model._latent_loggers() == []
    if case == "plot_latents=False":
        assert read_events(Path(logger.log_dir)).Tags()["images"] == []


def test_pictures_are_drawn_on_global_rank_zero_outside_the_sanity_check_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(logger=[CSVLogger(tmp_path), tensorboard], default_root_dir=tmp_path, accelerator="cpu")
    model = DigitsVAE()
    model.trainer = trainer

    assert model._latent_loggers() == [tensorboard]
    trainer.sanity_checking = True
    assert model._latent_loggers() == []
    trainer.sanity_checking = False
    monkeypatch.setattr(type(trainer.strategy), "is_global_zero", property(lambda self: False))
    assert model._latent_loggers() == []
