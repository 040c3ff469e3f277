"""How precisely Adafactor's preconditioner ``1 / sqrt(v)``, ``v = r c / mean(r)``, is formed, against float64.

Three ways to form it from the factored moments ``r`` (one per row) and ``c`` (one per column):

- ``sqrt last`` (lightning-opt, the seed's tour): ``sqrt((mean(r) / r) / c)``, one square root, taken last;
- ``_approx_sq_grad`` (fairseq, transformers, pytorch_optimizer): ``rsqrt(r / mean(r)) * rsqrt(c)``;
- ``torch.optim.Adafactor``: ``rsqrt(max(r c / max(mean(r), eps), eps^2))`` with ``eps`` the dtype's
  machine epsilon (torch 2.13's code: the outer product first).

Each form is evaluated in float32 and in bfloat16 on the same ``r`` and ``c`` (rounded to that dtype), and
compared with the same formula evaluated in float64 from those rounded values (torch's with the same ``eps``):
the table shows the error of the arithmetic alone, relative, per element (median, 99.9th percentile, maximum,
in units of the dtype's unit roundoff), and how many elements overflow (not finite where float64 is) or
underflow (zero where float64 is not). ``clamped`` counts the elements where torch's ``eps^2`` floor replaces
``v`` (a different estimate, not an error of the arithmetic: ``v < 1.4e-14`` in float32, ``v < 6.1e-5`` in
bfloat16).

The statistics (``--size`` x ``--size`` matrices, ``--seeds`` draws each):

- ``gaussian``: ``g = z``, standard normal;
- ``scales 10^4``: ``g_ij = a_i b_j z_ij`` with row and column scales ``a``, ``b`` log-uniform over 2 decades
  each (4 decades of ``g``), ``z`` Student-t with 3 degrees of freedom (heavy tails);
- ``scales 10^12``: the same over 6 decades each (12 decades of ``g``: embeddings, rarely used inputs);
- ``small grads``: ``scales 10^4`` times 1e-12 (a loss summed into small gradients, a tiny learning signal);
- ``digits MLP``: the real ``r`` and ``c`` of lightning-opt's Adafactor after 300 steps of the digits recipe's
  MLP (three weight matrices; the 8x8 digits have always-blank border pixels, whose columns stay at eps1).

Usage::

    .venv/bin/python benchmarks/adafactor_precision.py             # the README table
    .venv/bin/python benchmarks/adafactor_precision.py --size 256 --seeds 1 --no-digits
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, markdown_table, write_json  # noqa: E402

Form = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
"""``form(r, c, eps)``: the preconditioner from the factored moments (``eps``: torch's floor, its dtype's epsilon)."""


def sqrt_last(row: torch.Tensor, col: torch.Tensor, eps: float) -> torch.Tensor:
    """lightning-opt's form: ``sqrt((mean(r) / r) / c)`` (without its clamp to the largest float)."""
    return ((row.mean(dim=-2, keepdim=True) / row) / col).sqrt()


def approx_sq_grad(row: torch.Tensor, col: torch.Tensor, eps: float) -> torch.Tensor:
    """fairseq / transformers / pytorch_optimizer: ``rsqrt(r / mean(r)) * rsqrt(c)``."""
    return (row / row.mean(dim=-2, keepdim=True)).rsqrt() * col.rsqrt()


def torch_adafactor(row: torch.Tensor, col: torch.Tensor, eps: float) -> torch.Tensor:
    """torch.optim.Adafactor (torch 2.13): ``rsqrt(max(r c / max(mean(r), eps), eps^2))``."""
    estimate = (row @ col) / row.mean(dim=-2, keepdim=True).clamp(min=eps)
    return estimate.clamp(min=eps * eps).rsqrt()


FORMS: dict[str, Form] = {
    "sqrt last (lightning-opt)": sqrt_last,
    "_approx_sq_grad (transformers, pytorch_optimizer)": approx_sq_grad,
    "torch.optim.Adafactor": torch_adafactor,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EPS1 = 1e-30  # added to g^2, as in the paper and every implementation but torch's


def moments(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The factored moments of one gradient matrix (float64): row and column means of ``g^2 + eps1``."""
    square = g.double() ** 2 + EPS1
    return square.mean(dim=1, keepdim=True), square.mean(dim=0, keepdim=True)


def synthetic(name: str, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if name == "gaussian":
        return moments(torch.randn(size, size, generator=generator, dtype=torch.float64))
    decades = {"scales 10^4": 2.0, "scales 10^12": 6.0, "small grads": 2.0}[name]
    a = 10.0 ** (decades * (torch.rand(size, 1, generator=generator, dtype=torch.float64) - 0.5))
    b = 10.0 ** (decades * (torch.rand(1, size, generator=generator, dtype=torch.float64) - 0.5))
    normal = torch.randn(size, size, generator=generator, dtype=torch.float64)
    chi2 = torch.randn(3, size, size, generator=generator, dtype=torch.float64).pow(2).sum(0)
    t3 = normal / (chi2 / 3.0).sqrt()
    g = a * b * t3 * (1e-12 if name == "small grads" else 1.0)
    return moments(g)


def digits_moments(steps: int = 300) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The factored moments lightning-opt's Adafactor holds for the digits MLP's weights after ``steps`` steps."""
    from lightning_opt import Adafactor
    from lightning_opt.recipes.digits import DigitsClassifier
    from lightning_opt.recipes.digits.data import load_digits_tensors

    torch.manual_seed(0)
    inputs, labels = load_digits_tensors()
    model = DigitsClassifier()
    optimizer = Adafactor(model.parameters())
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(labels), (32,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    found = []
    for param in model.parameters():
        if param.dim() == 2:
            state = optimizer.state[param]
            found.append((state["exp_avg_sq_row"][0].double(), state["exp_avg_sq_col"][0].double()))
    return found


def errors(
    form: Form, row: torch.Tensor, col: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, int, int, int]:
    """Relative errors of ``form`` in ``dtype`` against ``form`` in float64 on the same rounded inputs, over the
    elements where both are finite and non-zero; the counts of overflowed and of underflowed elements; and of
    the elements where torch's ``eps^2`` floor acts."""
    eps = torch.finfo(dtype).eps
    row_low, col_low = row.to(dtype), col.to(dtype)
    exact = form(row_low.double(), col_low.double(), eps)
    got = form(row_low, col_low, eps).double()
    overflow = int((~got.isfinite() & exact.isfinite()).sum())
    underflow = int(((got == 0) & (exact != 0)).sum())
    usable = got.isfinite() & exact.isfinite() & (got != 0) & (exact != 0)
    estimate = (row_low.double() @ col_low.double()) / row_low.double().mean(dim=-2, keepdim=True).clamp(min=eps)
    clamped = int((estimate < eps * eps).sum()) if form is torch_adafactor else 0
    return ((got - exact).abs() / exact.abs())[usable], overflow, underflow, clamped


def cases(args: argparse.Namespace) -> Iterator[tuple[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    for name in ("gaussian", "scales 10^4", "scales 10^12", "small grads"):
        yield name, [synthetic(name, args.size, seed) for seed in range(args.seeds)]
    if args.digits:
        yield "digits MLP", digits_moments()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="rows and columns of the synthetic matrices")
    parser.add_argument("--seeds", type=int, default=3, help="synthetic matrices per statistic")
    parser.add_argument("--no-digits", dest="digits", action="store_false", help="skip the digits MLP")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/adafactor_precision.json"))
    args = parser.parse_args(argv)

    rows, records = [], []
    for case, matrices in cases(args):
        for dtype_name, dtype in DTYPES.items():
            for form_name, form in FORMS.items():
                parts = [errors(form, row, col, dtype) for row, col in matrices]
                relative = torch.cat([part[0] for part in parts])
                overflow, underflow, clamped = (sum(part[i] for part in parts) for i in (1, 2, 3))
                total = sum(row.numel() * col.numel() for row, col in matrices)
                median, p999, worst = (float(x) for x in torch.quantile(
                    relative[torch.randperm(len(relative))[: 1 << 24]], torch.tensor([0.5, 0.999], dtype=torch.float64)
                ).tolist() + [relative.max()])
                ulp = torch.finfo(dtype).eps / 2  # the unit roundoff
                record = {
                    "case": case, "dtype": dtype_name, "form": form_name, "elements": total,
                    "median": median, "p999": p999, "max": worst, "unit_roundoff": ulp,
                    "overflow": overflow, "underflow": underflow, "clamped": clamped,
                }
                records.append(record)
                rows.append([
                    case, dtype_name, form_name, f"{median / ulp:.2f}", f"{p999 / ulp:.2f}", f"{worst / ulp:.2f}",
                    f"{overflow}", f"{underflow}", f"{clamped}",
                ])
    headers = ["statistics", "dtype", "form", "median", "99.9%", "max", "overflow", "underflow", "clamped"]
    print(f"relative error of 1/sqrt(v) against float64, in units of the dtype's unit roundoff "
          f"(float32 2^-24, bfloat16 2^-8); {time.strftime('%F')}")
    print(markdown_table(headers, rows))
    write_json(args.out, {"machine": machine_info(), "created": time.strftime("%F %T"), "results": records})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
