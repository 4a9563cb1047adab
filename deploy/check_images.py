#!/usr/bin/env python3
"""Checks what can be checked of the images without building them (run by deploy/validate.sh):

- every file a Dockerfile copies out of its build stage is one that stage's build makes: the
  CPU binaries of `cargo build --release` (target/release), the GPU worker of gpu/build.sh
  (its CARGO_TARGET_DIR, gpu/env.sh), the repository's data/; and the CUDA image copies the
  very binaries gpu/bundle.sh packs for a GPU machine;
- every container of the manifests runs a program its image puts on the PATH, as the user and
  group the image creates;
- every data file the ConfigMap's run.toml names is in the image's data folder;
- the build context leaves out the build outputs (gigabytes in target/).

Prints each check and `N passed, M failed`; exits non-zero if any failed.
"""

import re
import shlex
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {"smalltext": ROOT / "deploy/Dockerfile", "smalltext-cuda": ROOT / "deploy/Dockerfile.cuda"}


def instructions(dockerfile):
    """(instruction, arguments) per logical line, continuations joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def copies(dockerfile):
    """(sources, destination) of each COPY out of another stage."""
    for word, rest in instructions(dockerfile):
        if word == "COPY" and rest.startswith("--from="):
            parts = shlex.split(rest)[1:]
            yield parts[:-1], parts[-1]


def installed(dockerfile):
    """The programs the image puts in /usr/local/bin, and its USER."""
    programs, user = set(), None
    for sources, dest in copies(dockerfile):
        if dest.startswith("/usr/local/bin"):
            programs |= {Path(dest).name if not dest.endswith("/") else Path(s).name for s in sources}
    for word, rest in instructions(dockerfile):
        if word == "USER":
            user = rest
    return programs, user


def gpu_target_dir():
    m = re.search(r'CARGO_TARGET_DIR="\$root/([^"]+)"', (ROOT / "gpu/env.sh").read_text())
    return m[1]


def made_by_build(source):
    """Whether a build stage's /src/PATH is made by the build that stage runs."""
    rel = source.removeprefix("/src/")
    if rel == "data":
        return (ROOT / "data").is_dir()
    binaries = {f"target/release/{b}" for b in ("coordinator", "worker")}
    # The GPU build makes the packages gpu/build.sh names.
    gpu_build = (ROOT / "gpu/build.sh").read_text()
    binaries |= {f"{gpu_target_dir()}/release/{p}" for p in re.findall(r"-p (\w+)", gpu_build)}
    return rel in binaries


def main():
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        passed, failed = passed + bool(ok), failed + (not ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        return ok

    for image, dockerfile in IMAGES.items():
        for sources, dest in copies(dockerfile):
            for s in sources:
                check(f"{dockerfile.name}: {s} is made by its build stage", made_by_build(s), dest)

    ignored = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()}
    check(".dockerignore keeps the build outputs out of the build context", {"target", "fuzz/target", ".cuda"} <= ignored)

    bundle = (ROOT / "gpu/bundle.sh").read_text()
    packed = set(re.search(r"for bin in ([^;]+);", bundle)[1].split())
    cuda_binaries = {s.removeprefix("/src/") for ss, d in copies(IMAGES["smalltext-cuda"]) for s in ss if "target/" in s}
    check("Dockerfile.cuda copies the binaries gpu/bundle.sh packs", cuda_binaries == packed, f"{sorted(cuda_binaries)} vs {sorted(packed)}")

    manifests = sorted((ROOT / "deploy/k8s").rglob("*.yaml"))
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            security = pod.get("securityContext", {})
            for c in pod["containers"]:
                name = c["image"].split("/")[-1].split(":")[0]
                where = f"{path.relative_to(ROOT)} {c['name']}"
                if not check(f"{where}: image {c['image']} is built here", name in IMAGES):
                    continue
                programs, user = installed(IMAGES[name])
                program = (c.get("command") or [None])[0]
                check(f"{where}: runs {program}, which the image installs", program in programs, ", ".join(sorted(programs)))
                uid, _, gid = (user or "").partition(":")
                check(f"{where}: runAsUser is the image's USER", str(security.get("runAsUser")) == uid, f"{security.get('runAsUser')} vs {user}")
                check(f"{where}: fsGroup is the image's group", str(security.get("fsGroup")) == gid, f"{security.get('fsGroup')} vs {user}")

    for doc in yaml.safe_load_all((ROOT / "deploy/k8s/configmap.yaml").read_text()):
        run = tomllib.loads(doc["data"]["run.toml"])
        paths = [*run.get("data", []), *(run[k] for k in ("test", "eval") if k in run)]
        for p in paths:
            rel = p.removeprefix("/opt/smalltext/")
            check(f"run.toml: {p} is in the image's data", p.startswith("/opt/smalltext/data/") and (ROOT / rel).is_file())

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
