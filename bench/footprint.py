"""What installing Keel costs on disk: the wheel, and the installed footprint with dependencies.

    python bench/footprint.py                    # the environment this Python runs in
    python bench/footprint.py --wheel dist/keel_llmops-0.1.0-py3-none-any.whl
    python bench/footprint.py --top 15           # the largest distributions

The footprint is measured from what pip recorded, not from a directory listing, so a shared
environment with other packages in it gives the same figure as a clean one: starting from the
`keel-llmops` distribution, it follows every `Requires-Dist` that applies here (markers
evaluated, extras followed where named), and adds up the sizes of the files each distribution's
RECORD lists. Each optional extra is reported as what it adds on top of the base install.
Run it in an environment where Keel is installed (editable or not).
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DISTRIBUTION = "keel-llmops"
MB = 1_000_000


def _distribution(name: str) -> Distribution | None:
    try:
        return distribution(name)
    except PackageNotFoundError:
        return None


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    # A requirement applies with no extra (the base), or with one of the extras asked for.
    return any(
        requirement.marker.evaluate({**default_environment(), "extra": extra})
        for extra in ("", *extras)
    )


def closure(root: str, extras: frozenset[str] = frozenset()) -> tuple[set[str], set[str]]:
    """The distributions `root[extras]` pulls in (itself included), and those not installed."""
    found: set[str] = set()
    missing: set[str] = set()
    pending: list[tuple[str, frozenset[str]]] = [(root, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, wanted = pending.pop()
        key = (canonicalize_name(name), wanted)
        if key in seen:
            continue
        seen.add(key)
        installed = _distribution(name)
        if installed is None:
            missing.add(canonicalize_name(name))
            continue
        found.add(canonicalize_name(installed.metadata["Name"]))
        for line in installed.requires or []:
            requirement = Requirement(line)
            if _applies(requirement, wanted):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return found, missing


def installed_bytes(name: str) -> int:
    """The bytes of the files pip recorded for one distribution (an editable one: its stub)."""
    installed = _distribution(name)
    if installed is None:
        return 0
    total = 0
    for file in installed.files or []:
        path = Path(str(installed.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def extras_of(name: str) -> list[str]:
    installed = _distribution(name)
    return sorted(installed.metadata.get_all("Provides-Extra") or []) if installed else []


def _report_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        entries = archive.infolist()
    unpacked = sum(entry.file_size for entry in entries)
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1000:.0f} kB")
    print(f"  {len(entries)} files, {unpacked / 1000:.0f} kB unpacked")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="also report this wheel's size")
    parser.add_argument("--top", type=int, default=10, help="list the N largest distributions")
    args = parser.parse_args(argv)

    if args.wheel:
        _report_wheel(args.wheel)
    if _distribution(DISTRIBUTION) is None:
        print(f"{DISTRIBUTION} is not installed in {sys.prefix}", file=sys.stderr)
        return 1

    base, missing = closure(DISTRIBUTION)
    sizes = {name: installed_bytes(name) for name in base}
    total = sum(sizes.values())
    print(f"installed footprint of {DISTRIBUTION} with its dependencies:")
    print(f"  {len(base)} distributions, {total / MB:,.0f} MB")
    if missing:
        print(f"  not installed here, so not counted: {', '.join(sorted(missing))}")
    print(f"  largest {args.top}:")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1])[: args.top]:
        print(f"    {name:<32} {size / MB:>8,.1f} MB")

    for extra in extras_of(DISTRIBUTION):
        with_extra, extra_missing = closure(DISTRIBUTION, frozenset({extra}))
        added = with_extra - base
        size = sum(installed_bytes(name) for name in added)
        note = f" (not installed here: {', '.join(sorted(extra_missing))})" if extra_missing else ""
        print(f"  extra [{extra}] adds {len(added)} distributions, {size / MB:,.0f} MB{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
