"""The wheel ships the doors inside our own namespace and claims no generic top-level name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.integration.conftest import ROOT


def test_wheel_has_one_top_level_package_with_the_integrations_inside(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("echolm_middleware-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"echolm_middleware"}
    assert "echolm_middleware/integrations/litellm_proxy.py" in names
    assert "echolm_middleware/integrations/litellm_router.py" in names
    assert "echolm_middleware/py.typed" in names

    # Installed from that wheel (not the checkout), the callback the wheel's docs name imports.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    probe = (
        "import echolm_middleware.doors.litellm_proxy as m, sys;"
        "assert m.__file__.startswith(sys.argv[1]), m.__file__;"
        "print(type(m.proxy_handler).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        check=True, capture_output=True, text=True, cwd=tmp_path,
        env={"PYTHONPATH": str(target), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.stdout.strip() == "EchoLMProxyHandler"
