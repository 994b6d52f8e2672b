"""Helpers shared by the deployment checks (deploy/check.sh)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


class Problems:
    """Collects failures; `exit()` prints them and ends the process non-zero if any."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[str] = []
        self.notes: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def check(self, condition: bool, message: str) -> bool:
        if not condition:
            self.add(message)
        return condition

    def note(self, message: str) -> None:
        self.notes.append(message)

    def exit(self, ok_message: str) -> None:
        for note in self.notes:
            print(f"  note: {note}")
        if self.items:
            for item in self.items:
                print(f"  FAIL [{self.name}] {item}", file=sys.stderr)
            print(f"{self.name}: {len(self.items)} problem(s)", file=sys.stderr)
            sys.exit(1)
        print(f"  ok: {ok_message}")


def load_documents(path: Path) -> list[dict]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


_METRIC_CALL = re.compile(r'\b(counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')


def emitted_metrics() -> dict[str, str]:
    """Metric names recorded anywhere in crates/ and services/ sources -> their kind."""
    found: dict[str, str] = {}
    for root in ("crates", "services"):
        for source in (REPO / root).rglob("*.rs"):
            if "/tests/" in str(source.relative_to(REPO)):
                continue
            text = source.read_text(errors="replace")
            for match in _METRIC_CALL.finditer(text):
                kind, name = match.group(1), match.group(2)
                found[name] = kind
    return found


_CONST = re.compile(r'pub const ([A-Z_]+):\s*&str\s*=\s*"([^"]+)"')


def topology_queue_names() -> list[str]:
    """The work queues crates/messaging/src/topology.rs declares (its `*_QUEUE` constants)."""
    text = (REPO / "crates/messaging/src/topology.rs").read_text()
    return [value for name, value in _CONST.findall(text) if name.endswith("_QUEUE")]
