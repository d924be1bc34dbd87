"""labse_core.packages.package_version: the one installed-version lookup."""

from __future__ import annotations

import torch

from labse_core.packages import package_version


def test_installed_and_missing_packages():
    assert package_version("torch") == torch.__version__
    assert package_version("no-such-distribution-labse") is None
