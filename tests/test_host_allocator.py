"""The training worker's host allocator (nemo_nvembed/training/host_allocator.py): jemalloc preloaded
by re-executing the worker when the library is installed, glibc otherwise or on request."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nemo_nvembed.training.host_allocator import ENV, AllocatorChoiceError, find_jemalloc, preload_env


@pytest.fixture
def lib(tmp_path):
    p = tmp_path / "libjemalloc.so.2"
    p.write_bytes(b"")
    return [str(tmp_path / "missing.so"), str(p)]


def test_the_environment_to_reexecute_with(lib):
    env = preload_env({"PATH": "/bin"}, lib)
    assert env == {"PATH": "/bin", "LD_PRELOAD": lib[1]}
    kept = preload_env({"LD_PRELOAD": "/x/other.so", "MALLOC_CONF": "narenas:2"}, lib)
    assert kept["LD_PRELOAD"] == f"{lib[1]}:/x/other.so" and kept["MALLOC_CONF"] == "narenas:2"


def test_no_reexecution_when_chosen_off_preloaded_or_missing(lib):
    assert preload_env({ENV: "glibc"}, lib) is None
    assert preload_env({"LD_PRELOAD": lib[1]}, lib) is None  # the re-executed process goes on
    assert preload_env({}, lib[:1]) is None  # not installed: glibc's malloc
    with pytest.raises(AllocatorChoiceError, match=f"{ENV}='tcmalloc' is not 'jemalloc' or 'glibc'"):
        preload_env({ENV: "tcmalloc"}, lib)


@pytest.mark.skipif(find_jemalloc() is None, reason="libjemalloc.so.2 is not installed (apt-get install libjemalloc2)")
@pytest.mark.parametrize("choice", ["jemalloc", "glibc"])
def test_a_worker_reexecutes_itself_with_jemalloc_mapped_same_pid(tmp_path, choice):
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, sys\n"
        "print('pid', os.getpid(), flush=True)\n"
        "from nemo_nvembed.training.host_allocator import reexec_with_jemalloc\n"
        "reexec_with_jemalloc()\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('pid', os.getpid(), 'jemalloc' in maps, sys.argv[1:])\n")
    env = {**os.environ, ENV: choice}
    env.pop("LD_PRELOAD", None)
    out = subprocess.run([sys.executable, "-u", str(script), "a", "b"], env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    first, last = out[0].split()[1], out[-2].split()
    if choice == "jemalloc":
        assert out[0] == out[1] and len(out) == 4, out  # the first line twice: before the exec and after it
        assert last[1] == first and last[2] == "True" and out[-2].endswith("['a', 'b']"), out
    else:
        assert len(out) == 3 and last[2] == "False", out
