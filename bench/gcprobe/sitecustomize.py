"""A probe of the cyclic garbage collector's pauses, for any Python process of a benchmark.

    GCPROBE=/tmp/gc PYTHONPATH=bench/gcprobe .venv/bin/python -m bench.run --steady-only ...

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; the benchmark passes the
parent's environment (minus the project's own variables) to the servers it starts. With
``GCPROBE`` set to a folder, every process writes ``gc-<pid>.log`` there: one line per
generation-2 collection, and per younger one that took over 5 ms, with its wall time in ms,
objects collected and objects frozen (``gc.freeze``). Not imported otherwise.
"""

import gc
import os
import time

_folder = os.environ.get("GCPROBE")
if _folder:
    os.makedirs(_folder, exist_ok=True)
    _log = open(os.path.join(_folder, f"gc-{os.getpid()}.log"), "a", buffering=1)  # noqa: SIM115
    _started: dict[int, float] = {}

    def _callback(phase: str, info: dict) -> None:
        generation = info["generation"]
        if phase == "start":
            _started[generation] = time.perf_counter()
            return
        ms = (time.perf_counter() - _started.get(generation, time.perf_counter())) * 1000
        if generation == 2 or ms > 5:
            _log.write(
                f"{time.time():.3f} gen{generation} {ms:.1f}ms "
                f"collected={info['collected']} frozen={gc.get_freeze_count()}\n"
            )

    gc.callbacks.append(_callback)
