"""The API reference (MkDocs + mkdocstrings, ``mkdocs.yml``) builds in strict mode from today's docstrings.

Strict mode turns every warning into a failure: a page that names a missing object, a docstring whose
cross-reference points nowhere, a broken link. Building it here puts it in the README's test command (CI).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent


def build(site: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_api_reference_builds_in_strict_mode(tmp_path: Path) -> None:
    result = build(tmp_path / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    pages = {
        "optim": ["lightning_opt.optim.adalo.AdaLo", "lightning_opt.optim.nsgda.NSGDA"],
        "callbacks": ["lightning_opt.callbacks.LossFeeder", "lightning_opt.callbacks.GradientTailMonitor"],
        "engine": ["lightning_opt.engine.BaseOptimizer"],
        "factories": ["lightning_opt.factories.build_optimizer"],
        "registry": ["lightning_opt.registry.OptimizerSpec", "lightning_opt.registry.get_spec"],
        "transforms": ["lightning_opt.transforms.soft_clip"],
        "tails": ["lightning_opt.tails.statistics"],
        "losses": ["lightning_opt.losses.soft_median"],
        "cli": ["lightning_opt.cli.main", "lightning_opt.lightning_cli.LightningOptCLI"],
        "recipes": ["lightning_opt.recipes.digits.DigitsClassifier", "lightning_opt.recipes.digits_vae.DigitsVAE"],
    }
    for page, anchors in pages.items():
        html = (tmp_path / "site" / "api" / page / "index.html").read_text()
        for anchor in anchors:
            assert f'id="{anchor}"' in html, f"{anchor} is missing from the {page} page"
    # Doctests render as code, not as Markdown (griffe reads the docstrings' "Example:" as an examples section);
    # Sphinx roles as code, reStructuredText literal blocks ("::") as code blocks (docs/griffe_extension.py).
    assert 'class="highlight"' in (tmp_path / "site" / "api" / "factories" / "index.html").read_text()
    for html_file in (tmp_path / "site" / "api").rglob("*.html"):
        html = html_file.read_text()
        assert re.search(r":(class|meth|func|mod|attr|data|exc):`", html) is None, f"a raw Sphinx role in {html_file}"


def test_a_broken_reference_fails_the_strict_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Broken\n\n::: lightning_opt.no_such_module\n")
    config = tmp_path / "mkdocs.yml"
    extension = f"{ROOT}/docs/griffe_extension.py:LightningOptReference"
    handler = {"paths": [str(ROOT)], "options": {"extensions": [extension]}}  # mkdocs.yml's, from another folder
    settings = {
        "INHERIT": str(ROOT / "mkdocs.yml"),
        "docs_dir": str(docs),
        "nav": ["index.md"],
        "plugins": ["autorefs", {"mkdocstrings": {"handlers": {"python": handler}}}],
    }
    config.write_text(json.dumps(settings))  # JSON is YAML
    result = build(tmp_path / "site", "-f", str(config))
    assert result.returncode != 0
    assert "lightning_opt.no_such_module" in result.stdout + result.stderr


def test_literal_blocks_and_sphinx_roles_become_markdown_code() -> None:
    spec = importlib.util.spec_from_file_location("griffe_extension", ROOT / "docs" / "griffe_extension.py")
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    docstring = "Per tensor::\n\n    m <- b * m\n\n    p <- p - m\n\n"
    docstring += "Then :meth:`~a.B.step` and :class:`a.C`.\n\nArgs:\n    x: y."
    module = griffe.Module("example", docstring=griffe.Docstring(docstring))
    extension._docstrings_to_markdown(module)
    assert module.docstring.value == (
        "Per tensor:\n\n```\nm <- b * m\n\np <- p - m\n```\n\nThen `step` and `a.C`.\n\nArgs:\n    x: y."
    )
