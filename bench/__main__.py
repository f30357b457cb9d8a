"""Run the benchmarks and write docs/performance.md.

Each module `bench/<name>.py` defines `async def run() -> str` returning a Markdown section
(its figures, the baseline measured in the same run, and the ratio). `python -m bench name ...`
runs only those; results of benchmarks not run are kept from the previous file.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import uvloop

import bench

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
MARK = re.compile(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", re.S)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
    total = next((ln.split()[1] for ln in mem.splitlines() if ln.startswith("Mem:")), "?")
    import os

    return f"{os.cpu_count()} cores ({cpu}), {total} GiB RAM, Python {platform.python_version()}"


def main(names: list[str]) -> int:
    available = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name[0] != "_")
    chosen = names or available
    unknown = set(chosen) - set(available)
    if unknown:
        print(f"unknown benchmarks: {sorted(unknown)}; available: {available}", file=sys.stderr)
        return 2
    old = dict(MARK.findall(DOC.read_text())) if DOC.exists() else {}
    sections: dict[str, str] = dict(old)
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        started = time.perf_counter()
        print(f"== bench {name}", flush=True)
        # A benchmark of what runs inside `callgate serve` runs on its event loop (uvloop).
        body = (uvloop.run if getattr(module, "SERVER_LOOP", False) else asyncio.run)(
            module.run()
        )
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        took = time.perf_counter() - started
        sections[name] = (
            f"{body.strip()}\n\n_Measured {stamp} on {machine()}; `make bench` "
            f"(`python -m bench {name}`), {took:.0f} s._\n"
        )
        print(sections[name], flush=True)
        _write(sections)  # after each one: a later benchmark's failure loses nothing
    return 0


def _write(sections: dict[str, str]) -> None:
    header = (
        "# Performance\n\nFigures written by `make bench` (`python -m bench`), one section per "
        "benchmark in `bench/`, each beside the baseline it names, measured in the same run.\n\n"
    )
    parts = [f"<!-- bench:{n} -->\n{sections[n]}<!-- /bench:{n} -->\n" for n in sorted(sections)]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(header + "\n".join(parts))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
