"""The `pipeline` command as a user types it."""
import time

from ..conftest import cli


def test_run_twice_status_ls_gc(project, tmp_path):
    first = cli("run", "extract", "--config", str(project), "--no-progress").stdout
    assert "audio: computed 6 clips" in first and str(tmp_path / "cache" / "stores") in first
    t0 = time.perf_counter()
    second = cli("run", "extract", "--config", str(project)).stdout
    assert time.perf_counter() - t0 < 10  # generous for CI; the README measures the real figure
    assert "logmel: up to date, 6 clips reused" in second and "computed" not in second
    assert cli("status", "--config", str(project)).stdout.split() == ["audio", "up", "to", "date",
                                                                      "logmel", "up", "to", "date"]
    cli("run", "extract", "--config", str(project), "--set", "logmel.preset=vgs", "--no-progress")
    ls = cli("ls", "--config", str(project)).stdout
    assert "6 rows  logmel (read by tiny)  logmel {'pad_short': False, 'preset': 'vgs'}" in ls and "total in" in ls
    assert "would remove" in cli("gc", "--dry-run", "--config", str(project)).stdout
    assert "removed 1 store(s)" in cli("gc", "--config", str(project)).stdout


def test_errors_are_clear_and_exit_2(project):
    p = cli("run", "extract", "--config", str(project), "--set", "logmel.bands=3", check=False)
    assert p.returncode == 2 and "stage 'logmel': params: unknown param 'bands'" in p.stderr
    p = cli("run", "extract", "--config", str(project), "--dataset", "nope", check=False)
    assert p.returncode == 2 and "unknown dataset 'nope'" in p.stderr
    p = cli("run", "train", "--config", str(project), check=False)
    assert p.returncode == 2 and "no stage in group 'train'" in p.stderr


def test_datasets_lists_adapters():
    out = cli("datasets").stdout
    assert "folder:" in out and "synthetic:" in out and "<class name>" in out


def test_a_cached_noop_imports_no_heavy_library(project, tmp_path):
    import subprocess
    import sys

    cli("run", "extract", "--config", str(project), "--no-progress")
    # what the two commands import, as the console script runs them (av: no media decoded)
    probe = ("import sys, runpy; sys.argv = ['pipeline'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('pipeline.cli', run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'tensorflow', 'av', 'torchaudio'})\n"
             "print('HEAVY', heavy)")
    for args in (["run", "extract"], ["status"]):
        out = subprocess.run([sys.executable, "-c", probe, *args, "--config", str(project)], capture_output=True,
                             text=True, check=True).stdout
        assert "HEAVY []" in out, (args, out)
