"""Checks deploy/Dockerfile and /.dockerignore against the workspace (no Docker engine needed).

- Every binary target of the workspace's service packages is built and copied into the image,
  and the packages the Dockerfile names exist.
- The commands that docker-compose.yml and the rendered Kubernetes manifests run are binaries
  the image holds.
- Nothing the build reads is excluded from the build context by .dockerignore: every workspace
  manifest, Cargo.lock, and each file the sources embed at compile time (include_str!,
  include_bytes!, embed_migrations!).

usage: image_check.py RENDERED.yaml...
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from common import REPO, Problems, load_documents

DOCKERFILE = REPO / "deploy/Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def ignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + "$")))
    return rules


def excluded(path: str, rules) -> bool:
    """Docker semantics: the last matching rule wins; a rule excludes a directory's contents."""
    parts = path.split("/")
    verdict = False
    for negate, regex in rules:
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = not negate
    return verdict


def main() -> None:
    problems = Problems("image")
    dockerfile = DOCKERFILE.read_text()
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout)
    packages = {p["name"]: p for p in metadata["packages"]}
    workspace_bins = {t["name"]: p["name"] for p in metadata["packages"] for t in p["targets"] if "bin" in t["kind"]}

    named = set(re.findall(r"-p ([a-z0-9_-]+)", dockerfile))
    copied = set(re.findall(r"target/release/([a-z0-9_-]+)", dockerfile))
    for package in named:
        problems.check(package in packages, f"Dockerfile builds -p {package}, which is no workspace package")
    for binary, package in workspace_bins.items():
        problems.check(package in named, f"binary {binary} (package {package}) is not built by the Dockerfile")
        problems.check(binary in copied, f"binary {binary} is not copied into the runtime image")
    problems.check(re.search(r"^USER 10001(:10001)?$", dockerfile, re.M) is not None, "the runtime image must run as USER 10001")
    problems.check(re.search(r"^FROM debian:\$\{DEBIAN_RELEASE\}-slim", dockerfile, re.M) is not None
                   and "DEBIAN_RELEASE=bookworm" in dockerfile, "the runtime image must be debian bookworm-slim")
    problems.check("ca-certificates" in dockerfile, "the runtime image needs ca-certificates")

    # Commands run by compose and Kubernetes are binaries of the image.
    compose = yaml.safe_load((REPO / "deploy/docker-compose.yml").read_text())
    commands = {f"compose {name}": svc["command"][0] for name, svc in compose["services"].items()
                if svc.get("build") and isinstance(svc.get("command"), list)}
    for rendered in sys.argv[1:]:
        for doc in load_documents(Path(rendered)):
            if doc.get("kind") in ("Deployment", "Job"):
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    argv = container.get("command") or container.get("args") or []
                    if argv:
                        commands[f"{Path(rendered).name} {doc['kind']}/{doc['metadata']['name']}"] = argv[0]
    for where, binary in commands.items():
        problems.check(binary in copied, f"{where} runs {binary}, which the image does not hold")

    # The build context keeps what cargo reads.
    rules = ignore_rules()
    needed = ["Cargo.toml", "Cargo.lock"]
    for package in metadata["packages"]:
        manifest = Path(package["manifest_path"]).relative_to(REPO)
        needed.append(str(manifest))
        if package["name"] in named or any(package["name"] in [d["name"] for d in packages[n]["dependencies"]] for n in named):
            for target in package["targets"]:
                if set(target["kind"]) & {"lib", "bin", "custom-build", "proc-macro"}:
                    needed.append(str(Path(target["src_path"]).relative_to(REPO)))
    for root in ("crates", "services"):
        for source in (REPO / root).rglob("*.rs"):
            rel = source.relative_to(REPO)
            if "/tests/" in f"/{rel}" or excluded(str(rel), rules):
                continue
            text = source.read_text(errors="replace")
            for macro, arg in re.findall(r'\b(include_str|include_bytes|embed_migrations)!\(\s*"([^"]+)"', text):
                base = source.parent if macro != "embed_migrations" else source.parents[1]
                needed.append(str((base / arg).resolve().relative_to(REPO)))
    for path in sorted(set(needed)):
        problems.check(not excluded(path, rules), f".dockerignore excludes {path}, which the build reads")
        problems.check((REPO / path).exists(), f"{path} does not exist")
    problems.exit(f"Dockerfile builds and ships {', '.join(sorted(copied))}; the build context keeps the "
                  f"{len(set(needed))} files cargo reads; compose and Kubernetes run only those binaries")


if __name__ == "__main__":
    main()
