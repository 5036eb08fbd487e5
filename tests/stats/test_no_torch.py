"""The stats package reads result files only: importing it must not pull in torch (or open_clip)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_importing_every_stats_module_does_not_import_torch():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import aaclip_xattn.stats as stats
        names = sorted(m.name for m in pkgutil.iter_modules(stats.__path__, "aaclip_xattn.stats."))
        for name in names:
            importlib.import_module(name)
        heavy = sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)
        assert not heavy, f"importing {names} pulled in {heavy}"
        print(" ".join(names))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    for name in ("collect", "compare", "bootstrap", "power", "bayes", "config", "__main__"):
        assert f"aaclip_xattn.stats.{name}" in imported
