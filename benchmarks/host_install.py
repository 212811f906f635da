"""Register this checkout with vLLM on a host where pip cannot install it.

vLLM loads plugins only through installed distributions' ``vllm.general_plugins`` entry
points. On an offline GPU host (no package index) ``pip install -e .`` can leave none (its
build needs the network), and without one vLLM silently serves stock attention. This writes the
metadata pip would have written, METADATA and entry_points.txt read from setup.py, into a
directory on PYTHONPATH; the code itself stays in the checkout:

    python3 -m benchmarks.host_install /tmp/site
    export PYTHONPATH=/tmp/site:$PWD
"""

from __future__ import annotations

import argparse
import ast
import shutil
from pathlib import Path
from typing import Any

SETUP_PY = Path(__file__).resolve().parent.parent / "setup.py"


def setup_arguments(setup_py: Path = SETUP_PY) -> dict[str, Any]:
    """The literal keyword arguments of setup.py's ``setup(...)`` call (name, version,
    entry_points, ...), so the metadata has one source."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            arguments = {}
            for keyword in node.keywords:
                try:
                    arguments[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    pass  # computed at build time, e.g. find_packages(...)
            return arguments
    raise RuntimeError(f"no setup(...) call in {setup_py}")


def write_metadata(site: Path, setup_py: Path = SETUP_PY) -> Path:
    """Write ``<name>-<version>.dist-info`` into ``site`` (replacing any other version's) and
    return its path."""
    arguments = setup_arguments(setup_py)
    name, version = arguments["name"], arguments["version"]
    stem = name.replace("-", "_")
    site.mkdir(parents=True, exist_ok=True)
    for stale in site.glob(f"{stem}-*.dist-info"):
        shutil.rmtree(stale)
    dist = site / f"{stem}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = [
        "\n".join([f"[{group}]", *entries]) for group, entries in arguments.get("entry_points", {}).items()
    ]
    (dist / "entry_points.txt").write_text("\n\n".join(sections) + "\n")
    return dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("site", type=Path, help="a directory on PYTHONPATH, e.g. /tmp/site")
    dist = write_metadata(parser.parse_args().site)
    print(f"wrote {dist}; put the checkout on PYTHONPATH too: export PYTHONPATH={dist.parent}:$PWD")


if __name__ == "__main__":
    main()
