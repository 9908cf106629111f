"""Every Python example in README.md runs the way a user runs it: saved as a file, `python file.py`.

Each example runs in its own directory, against this session's Prefect API, with the README's
stand-in for "your raw data" (`signal.dat`) present as real Siemens data.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(
    r"^(<!-- e2e: [\w-]+ -->\n)?```python\n(.*?)^```", re.MULTILINE | re.DOTALL
)
# A block under an `<!-- e2e: NAME -->` marker needs a server, a worker and deployments:
# tests/e2e/test_ways_in.py runs it.
EXAMPLES = [code for marker, code in PYTHON_BLOCK.findall(README.read_text()) if not marker]


def test_the_readme_has_python_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs_as_a_script(index: int, tmp_path: Path, twix_example: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / f"example_{index}.py"
    script.write_text(EXAMPLES[index])
    shutil.copy(twix_example, tmp_path / "signal.dat")
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (
        f"{script.name} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    )
