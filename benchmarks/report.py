"""What the benchmark scripts share: the machine's description and their sections of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """``"<CPU model>, <n> cores"`` from /proc/cpuinfo where there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def write_section(path: Path, table: str, *, begin: str, end: str) -> None:
    """Replaces the text between the ``begin`` and ``end`` markers of ``path`` (appends it the first time)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{table}{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def write_table(table: str, *, out: str | None, name: str, output: str, begin: str, end: str) -> Path:
    """The table as ``out/name`` when ``--out`` is given, else as its section of ``output`` (BENCHMARKS.md)."""
    if out:
        path = Path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)
    else:
        path = Path(output)
        write_section(path, table, begin=begin, end=end)
    return path
