"""The wheel ships the Alembic migrations (env.py, the template and every revision)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from onhand.ledger.migrate import MIGRATIONS_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_contains_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("onhand-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"env.py", "script.py.mako"} | {
        f"versions/{p.name}" for p in (MIGRATIONS_DIR / "versions").glob("*.py")
    }
    assert "versions/0001_initial.py" in expected
    for name in expected:
        assert f"onhand/ledger/migrations/{name}" in names
    assert "onhand/ledger/migrate.py" in names
