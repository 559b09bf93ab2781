"""``storycast env``: versions, devices and installed extras, for bug reports."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "print versions, devices and which optional extras are installed"


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(name, help=HELP, description=HELP)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import platform
    import sys

    from storycast.utils.environment import (
        CORE_PACKAGES,
        OPTIONAL_PACKAGES,
        default_cache_dir,
        devices,
        extras_status,
        package_versions,
    )

    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(CORE_PACKAGES),
        "optional packages": package_versions(OPTIONAL_PACKAGES),
        "extras": extras_status(),
        "devices": devices(),
        "cache": str(default_cache_dir()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"python      {report['python']} ({report['platform']})")
    for title, key in (("packages", "packages"), ("optional", "optional packages")):
        print(f"{title}:")
        for name, version in report[key].items():
            print(f"  {name:<16} {version or 'not installed'}")
    print("extras:")
    for name, ok in report["extras"].items():
        print(f"  {name:<24} {'yes' if ok else 'no'}")
    print("devices:")
    for device in report["devices"]:
        details = ", ".join(f"{k}={v}" for k, v in device.items() if k != "device")
        print(f"  {device['device']:<8} {details}")
    print(f"cache       {report['cache']}")
    return 0
