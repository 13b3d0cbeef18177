"""Work spread over worker processes (`map_processes`, for CPU work that holds the GIL): results in order, errors
raised here, arguments made only a few items ahead, a multivariate reference fitted in a worker equal to one
fitted here; a fleet in slices; one model's error as its line; a closed connection's freed memory given back."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from monitor_assets.multivariate.logic import fitted_reference
from monitor_assets.stats.drift import FeatureSpec
from monitor_assets.stats.multivariate import MultivariateReference
from monitor_assets.storage.per_model import TRANSIENT_ERRORS, map_processes, model_chunks, or_why


def test_the_work_runs_in_worker_processes_and_comes_back_in_order():
    items = list(range(20))
    assert list(map_processes(divmod, lambda i: (i, 3), items, workers=2, min_items=1)) == [divmod(i, 3)
                                                                                         for i in items]
    pids = set(map_processes(os.getpid, lambda i: (), items, workers=2, min_items=1))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_few_items_run_here_one_after_the_other():
    assert set(map_processes(os.getpid, lambda i: (), [1, 2, 3], workers=2)) == {os.getpid()}  # < 8 items


def test_an_error_in_a_worker_or_in_making_the_arguments_is_raised_here():
    with pytest.raises(ValueError, match="invalid literal"):
        list(map_processes(int, lambda i: ("x" if i == 5 else str(i),), list(range(10)), workers=2, min_items=1))

    def args_of(i):
        if i == 3:
            raise KeyError("no such model")
        return (i, 2)
    with pytest.raises(KeyError, match="no such model"):
        list(map_processes(divmod, args_of, list(range(10)), workers=2, min_items=1))


def test_a_worker_that_dies_costs_its_own_item_only_when_the_caller_says_how_to_record_it():
    """A worker killed mid-item (here it aborts, as the OOM killer's SIGKILL or a crash in native code would end
    it) breaks the whole pool: the items in flight are run again alone, the one that kills its worker again gets
    the caller's record of the failure, every other item its result, in order. Without `on_death`, the step fails."""
    import operator
    from concurrent.futures.process import BrokenProcessPool

    def args_of(i):
        return (os.abort,) if i == 5 else (abs, -i)

    died = []
    got = list(map_processes(operator.call, args_of, list(range(12)), workers=2, min_items=1,
                             on_death=lambda item, why: died.append(item) or f"model {item}: {why}"))
    assert died == [5]
    assert got[:5] == [0, 1, 2, 3, 4] and got[6:] == list(range(6, 12))
    assert got[5].startswith("model 5: its worker process died")
    with pytest.raises(BrokenProcessPool):
        list(map_processes(operator.call, args_of, list(range(12)), workers=2, min_items=1))


def test_arguments_are_made_at_most_two_items_a_worker_ahead():
    made = []
    for i, _ in enumerate(map_processes(divmod, lambda i: made.append(i) or (i, 2), list(range(30)), workers=2,
                                        min_items=1)):
        assert len(made) <= i + 1 + 4  # never all 30 frames in memory at once
    assert made == list(range(30))


def test_a_reference_fitted_in_a_worker_equals_one_fitted_here():
    rng = np.random.default_rng(3)
    frames = [pd.DataFrame({"a": rng.normal(size=600), "b": rng.exponential(size=600),
                            "shop": rng.choice(["n", "s", None], 600)}) for _ in range(3)]
    specs = [FeatureSpec("a", "numeric"), FeatureSpec("b", "numeric"), FeatureSpec("shop", "categorical")]
    here = [fitted_reference(f, specs) for f in frames]
    there = list(map_processes(fitted_reference, lambda f: (f, specs), frames, workers=2, min_items=1))
    for (a, _), (b, _) in zip(there, here, strict=True):  # equal objects (the text's set order follows the hash seed)
        a, b = MultivariateReference.from_text(a), MultivariateReference.from_text(b)
        assert a.thresholds == b.thresholds and a.known == b.known and a.encoder == b.encoder
        assert np.array_equal(a.sample, b.sample, equal_nan=True)
        assert np.array_equal(a.pca.components, b.pca.components)
    assert [e["reference_rows"] for _, e in there] == [600, 600, 600]
    why = list(map_processes(fitted_reference, lambda f: ("reference could not be fitted: x", specs), frames,
                             workers=2, min_items=1))
    assert why == ["reference could not be fitted: x"] * 3


def test_a_script_without_a_main_guard_runs_once_not_again_in_every_worker(tmp_path):
    """multiprocessing imports the parent's `__main__` in each worker by default: a script without the guard ran
    its top level again there (a second ingestion, a second write), found by a benchmark script."""
    import subprocess
    import sys

    marker = tmp_path / "ran.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(f"""
from monitor_assets.storage.per_model import TRANSIENT_ERRORS, map_processes, model_chunks, or_why
with open({str(marker)!r}, "a") as f:
    f.write("ran\\n")
print(sum(map_processes(abs, lambda i: (-i,), list(range(12)), workers=2, min_items=1)))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(sum(range(12)))
    assert marker.read_text() == "ran\n"  # the top level ran here only


def test_a_fleet_goes_in_slices_in_order():
    items = list(range(7))
    assert list(model_chunks(items, 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(model_chunks([], 3)) == []
    assert [x for chunk in model_chunks(list(range(120))) for x in chunk] == list(range(120))


def test_one_models_error_is_its_line_and_a_transient_one_is_raised():
    assert or_why(lambda: 5) == 5
    assert or_why(lambda: int("x"), "not fitted") == "not fitted: ValueError: invalid literal for int() with base 10: 'x'"
    assert OSError in TRANSIENT_ERRORS

    def disk():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        or_why(disk)


FREED_HEAP = r"""
from monitor_assets.storage.warehouse import release_memory

def rss():
    return next(int(line.split()[1]) << 10 for line in open("/proc/self/status") if line.startswith("VmRSS:"))

blocks = [bytes(4000) for _ in range(100_000)]  # 400 MB from the heap, one block in 20 kept: it cannot shrink
kept = blocks[::20]
del blocks
before = rss()
release_memory()
print(before, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_is_given_back_and_closing_a_connection_does_it(tmp_path, monkeypatch):
    out = subprocess.run([sys.executable, "-c", FREED_HEAP], capture_output=True, text=True, check=True).stdout.split()
    before, after = int(out[-2]), int(out[-1])
    assert before - after > 200 << 20, (before, after)  # about 360 MB of free pages were held
    from monitor_assets.storage import warehouse

    calls = []
    monkeypatch.setattr(warehouse, "release_memory", lambda: calls.append(1))
    with warehouse.connect(None, str(tmp_path / "lake")):
        assert not calls
    assert calls == [1]
