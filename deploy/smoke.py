#!/usr/bin/env python3
"""Smoke test of the CPU image (deploy/build-local.sh), driven by the Kubernetes manifests.

The coordinator's and the workers' command, args, env, security context, resource limits,
volumes and probes are read from deploy/k8s/*.yaml and turned into `podman run` options, as a
kubelet would: the ConfigMap's files and the join token (mode 0440, group fsGroup, as the
kubelet mounts a Secret under fsGroup) become read-only bind mounts, the PersistentVolumeClaim
a directory of the fsGroup, the coordinator's Service name a network alias, `status.podIP` the
container's address on a podman network, and `$(VAR)` in args the env's values. Then:

  1. one epoch of TREC (the manifests' args and `--epochs 1`): the run's summary.json;
  2. the manifests' run as it stands: the gRPC health probes as the manifests define them,
     /metrics from the coordinator's container, a worker container killed (the run goes on,
     and its StatefulSet's restart brings it back), the coordinator container killed and
     created again (it continues its run from its checkpoint); the run's summary.json; the
     coordinator started once more after the end, as the Deployment would (it refuses the
     finished run and leaves it as it is).

Exited worker containers are started again, as their StatefulSet would restart them. Prints
every check and `N passed, M failed`; exits non-zero if any failed.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
NETWORK = "smalltext-smoke"
SUBNET = "10.89.77.0/24"
# The coordinator's pods get fresh addresses, as a Deployment's new pod does; workers keep theirs.
COORDINATOR_IPS = iter(f"10.89.77.{n}" for n in range(10, 60))
WORKER_IP = "10.89.77.{}"


class Checks:
    def __init__(self):
        self.passed, self.failed = 0, 0

    def __call__(self, name, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        return ok


def podman(*args, check=True):
    r = subprocess.run(["podman", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {r.stderr.strip()}")
    return r


def manifests():
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def one(docs, kind):
    found = [d for (k, _), d in docs.items() if k == kind]
    if len(found) != 1:
        raise SystemExit(f"deploy/k8s: expected one {kind}, found {len(found)}")
    return found[0]


class Pod:
    """One pod template of the manifests, as `podman run` options."""

    def __init__(self, workload, host_dirs, image):
        self.spec = workload["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        self.image = image
        self.security = self.spec.get("securityContext", {})
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.host_dirs = host_dirs

    def probe_port(self, probe):
        grpc = self.container.get(probe, {}).get("grpc")
        return grpc and grpc["port"]

    def env(self, ip):
        values = {}
        for e in self.container.get("env", []):
            if "value" in e:
                values[e["name"]] = str(e["value"])
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                values[e["name"]] = ip
            else:
                raise SystemExit(f"{e['name']}: this smoke test knows value and status.podIP only")
        return values

    def argv(self, env, extra):
        # Kubernetes expands $(VAR) in command and args from the container's env.
        expand = lambda s: re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), s)
        command = [expand(a) for a in self.container.get("command", [])]
        args = [expand(a) for a in self.container.get("args", [])]
        return command, args + extra

    def mounts(self):
        out = []
        for m in self.container.get("volumeMounts", []):
            volume = self.volumes[m["name"]]
            host = self.host_dirs[volume_kind(volume)]
            out += ["--volume", f"{host}:{m['mountPath']}:{'ro' if m.get('readOnly') else 'rw'}"]
        return out

    def run_options(self, name, ip, aliases=(), extra_args=()):
        env = self.env(ip)
        command, args = self.argv(env, list(extra_args))
        opts = ["--name", name, "--hostname", name, "--network", NETWORK, "--ip", ip]
        for a in aliases:
            opts += ["--network-alias", a]
        if "runAsUser" in self.security:
            opts += ["--user", str(self.security["runAsUser"])]
        if "fsGroup" in self.security:
            opts += ["--group-add", str(self.security["fsGroup"])]
        limits = self.container.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            opts += ["--cpus", str(limits["cpu"])]
        if "memory" in limits:
            opts += ["--memory", limits["memory"].replace("Gi", "g").replace("Mi", "m")]
        for k, v in env.items():
            opts += ["--env", f"{k}={v}"]
        if command:
            opts += ["--entrypoint", command[0]]
            args = command[1:] + args
        return opts + self.mounts() + [self.image] + args

    def start(self, name, ip, aliases=(), extra_args=()):
        podman("rm", "--force", "--ignore", name)
        podman("run", "--detach", *self.run_options(name, ip, aliases, extra_args))


def volume_kind(volume):
    for kind in ("configMap", "secret", "persistentVolumeClaim"):
        if kind in volume:
            return kind
    raise SystemExit(f"volume {volume['name']}: this smoke test knows configMap, secret, PVC")


class Logs:
    """A container's log lines (JSON, as the manifests ask), followed as they come."""

    def __init__(self, name):
        self.name, self.lines, self.lock = name, [], threading.Lock()
        self.proc = subprocess.Popen(
            ["podman", "logs", "--follow", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                message = json.loads(line).get("fields", {}).get("message", line)
            except ValueError:
                message = line.rstrip("\n")
            with self.lock:
                self.lines.append(message)

    def wait_for(self, pattern, timeout, after=0):
        """The first line from index `after` on that matches: (index, match), or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for i in range(after, len(self.lines)):
                    m = re.search(pattern, self.lines[i])
                    if m:
                        return i, m
            time.sleep(0.05)
        return None

    def text(self):
        with self.lock:
            return "\n".join(self.lines)


def health(ip, port, timeout=10):
    """The gRPC health service's answer for the whole server, as a kubelet's grpc probe asks."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with grpc.insecure_channel(f"{ip}:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                if last == "SERVING":
                    return last
        except grpc.RpcError as e:
            last = e.code().name
        time.sleep(0.3)
    return last


def metric(text, name):
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return m and float(m[1])


def is_json(line):
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def state(name):
    r = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, check=False)
    if r.returncode != 0:
        return None, None
    status, code = r.stdout.split()
    return status, int(code)


def wait_exit(name, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, code = state(name)
        if status in ("exited", "stopped"):
            return code
        time.sleep(0.2)
    return None


class Supervisor:
    """Starts exited worker containers again, as a StatefulSet restarts its pods' containers."""

    def __init__(self, names):
        self.names, self.stopped = names, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stopped.wait(0.5):
            for n in self.names:
                if state(n)[0] == "exited":
                    podman("start", n, check=False)

    def stop(self):
        self.stopped.set()


class Cluster:
    """The manifests' pods on one podman network, with their volumes on the host."""

    COORDINATOR = "smalltext-coordinator"

    def __init__(self, opts, check):
        self.opts, self.check, self.docs = opts, check, manifests()
        self.deployment, self.statefulset = one(self.docs, "Deployment"), one(self.docs, "StatefulSet")
        self.security = self.deployment["spec"]["template"]["spec"]["securityContext"]
        replicas = self.statefulset["spec"]["replicas"]
        self.workers = [f"{self.statefulset['metadata']['name']}-{i}" for i in range(replicas)]
        # The coordinator's Services' names, by which the workers find it.
        labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        self.aliases = [
            svc["metadata"]["name"]
            for (kind, _), svc in self.docs.items()
            if kind == "Service" and all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        ]
        self.host_dirs = self._volumes(secrets.token_urlsafe(32))

    def check_manifests(self):
        args = self.deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        expect = args[args.index("--expect-workers") + 1]
        self.check(
            "the coordinator expects as many workers as the StatefulSet runs",
            int(expect) == len(self.workers),
            f"--expect-workers {expect}, replicas {len(self.workers)}",
        )
        self.check("a Service selects the coordinator's pods", bool(self.aliases), ", ".join(self.aliases))
        # The image's own user, as a container runs without a securityContext.
        ids = podman("run", "--rm", "--entrypoint", "id", self.opts.image).stdout.strip()
        user, group = self.security.get("runAsUser"), self.security.get("fsGroup")
        self.check(
            "the image's user and group are the manifests' runAsUser and fsGroup",
            ids.startswith(f"uid={user}(smalltext) gid={group}(smalltext)"),
            ids,
        )

    def _volumes(self, token_value):
        """The ConfigMap's files and the Secret's, laid out as the kubelet mounts them."""
        work = self.opts.work
        config = work / "config"
        config.mkdir(parents=True)
        for name, text in one(self.docs, "ConfigMap")["data"].items():
            (config / name).write_text(text)
        token = work / "token"
        token.mkdir()
        for name in one(self.docs, "Secret").get("stringData", {}):
            # The manifest's value is a placeholder its comment says to replace.
            (token / name).write_text(token_value)
            os.chown(token / name, 0, self.security["fsGroup"])
            os.chmod(token / name, 0o440)
        return {"configMap": config, "secret": token}

    def run_volume(self, name):
        """A fresh PersistentVolumeClaim: a directory of the fsGroup, setgid, as the kubelet makes it."""
        d = self.opts.work / name
        d.mkdir()
        os.chown(d, 0, self.security["fsGroup"])
        os.chmod(d, 0o2775)
        return d

    def pods(self, runs):
        dirs = {**self.host_dirs, "persistentVolumeClaim": runs}
        return (
            Pod(self.deployment, dirs, self.opts.image),
            Pod(self.statefulset, dirs, self.opts.image),
        )

    def start_coordinator(self, pod, extra_args=()):
        """A new coordinator pod (a fresh address, as a Deployment's new pod gets), its log
        followed: its address and log."""
        ip = next(COORDINATOR_IPS)
        pod.start(self.COORDINATOR, ip, self.aliases, extra_args)
        return ip, Logs(self.COORDINATOR)

    def start_workers(self, pod):
        for i, w in enumerate(self.workers):
            pod.start(w, self.worker_ip(i))

    @staticmethod
    def worker_ip(i):
        return WORKER_IP.format(100 + i)

    def remove(self):
        for c in [self.COORDINATOR, *self.workers]:
            podman("rm", "--force", "--ignore", c, check=False)

    def one_epoch(self):
        check = self.check
        runs = self.run_volume("runs-one-epoch")
        coordinator, worker = self.pods(runs)
        _, logs = self.start_coordinator(coordinator, ["--epochs", "1"])
        self.start_workers(worker)
        code = wait_exit(self.COORDINATOR, 300)
        check("one epoch: the coordinator exits 0", code == 0, f"exit code {code}" + ("" if code == 0 else "\n" + logs.text()[-3000:]))
        summary = summary_of(runs)
        check(
            "one epoch: summary.json in the mounted run directory",
            bool(summary) and summary.get("epochs") == 1 and summary.get("workers") == len(self.workers) and summary.get("evaluated_on") == "test",
            json.dumps({k: summary.get(k) for k in ("epochs", "workers", "evaluated_on", "accuracy")}) if summary else "missing",
        )
        check("one epoch: the model in the run directory", (runs / "trec" / "model").is_dir())
        for w in self.workers:
            code = wait_exit(w, 30)
            check(f"one epoch: {w} exits 0 when the run ends", code == 0, f"exit code {code}")
        for c in [self.COORDINATOR, *self.workers]:
            out = podman("logs", c)
            lines = out.stdout.splitlines() + out.stderr.splitlines()
            not_json = [l for l in lines if not is_json(l)]
            check(f"one epoch: {c} logs JSON lines only, as its args ask", lines and not not_json, (not_json or [""])[0][:200])
            warned = [l for l in lines if "token file" in l]
            check(f"one epoch: {c} takes the token as the Secret mounts it", not warned, (warned or [""])[0][:200])

    def faults(self):
        check = self.check
        runs = self.run_volume("runs")
        coordinator, worker = self.pods(runs)
        ip, logs = self.start_coordinator(coordinator)
        port = coordinator.probe_port("readinessProbe")
        status = health(ip, port)
        check(f"coordinator: gRPC health probe on :{port}", status == "SERVING", str(status))
        self.start_workers(worker)
        supervisor = Supervisor(self.workers)
        try:
            wport = worker.probe_port("readinessProbe")
            for i, w in enumerate(self.workers):
                status = health(self.worker_ip(i), wport)
                check(f"{w}: gRPC health probe on :{wport}", status == "SERVING", str(status))
            first = logs.wait_for(r"^epoch (\d+)/", 240)
            if not check("the run trains its first epoch", first is not None, logs.text()[-3000:] if first is None else ""):
                return
            self.scrape(coordinator, ip)

            victim = self.workers[-1]
            podman("kill", "--signal", "KILL", victim)
            lost = logs.wait_for(rf"worker \d+ \(host {victim}, pid \d+\) lost", 60, first[0])
            check(f"{victim} killed: the coordinator drops it", lost is not None)
            later = logs.wait_for(r"^epoch (\d+)/", 120, (lost or first)[0] + 1)
            check(f"{victim} killed: the run goes on", later is not None, later and later[1][0])
            if later is None:
                return
            back = logs.wait_for(rf"worker \d+ \(host {victim}, pid \d+\) (joined|admitted)", 120, lost[0] if lost else 0)
            check(f"{victim} restarted: it joins the running run", back is not None)

            # A new pod of the Deployment: same command, same volume, a new address.
            podman("kill", "--signal", "KILL", self.COORDINATOR)
            podman("rm", "--force", self.COORDINATOR)
            _, logs = self.start_coordinator(coordinator)
            continued = logs.wait_for(r"holds an unfinished run of this same command", 60)
            check("coordinator restarted: it continues its run", continued is not None, logs.text()[-2000:] if continued is None else "")
            resumed = logs.wait_for(r"resuming \S+ after epoch (\d+)", 60)
            check("coordinator restarted: from its checkpoint", resumed is not None, resumed and resumed[1][0])
            code = wait_exit(self.COORDINATOR, 600)
            check("coordinator restarted: the run ends, exit 0", code == 0, f"exit code {code}" + ("" if code == 0 else "\n" + logs.text()[-3000:]))
        finally:
            supervisor.stop()
        summary = summary_of(runs) or {}
        epoch_log = summary.get("epoch_log", [])
        check(
            "the run's summary.json: finished, every epoch once and whole, the lost worker counted",
            bool(summary)
            and [e.get("epoch") for e in epoch_log] == list(range(1, len(epoch_log) + 1))
            and all(e.get("examples_trained") == e.get("examples_planned") for e in epoch_log)
            and len(epoch_log) == summary.get("epochs")
            and summary.get("workers_lost", 0) >= 1
            and summary.get("evaluated_on") == "test",
            json.dumps({k: summary.get(k) for k in ("epochs", "best_epoch", "workers_lost", "evaluated_on", "accuracy")}),
        )
        # The Deployment restarts a coordinator whose run ended: the finished run stays as it is.
        before = (runs / "trec" / "summary.json").read_bytes() if summary else b""
        _, logs = self.start_coordinator(coordinator)
        code = wait_exit(self.COORDINATOR, 60)
        refused = logs.wait_for(r"already holds a finished run", 5)
        check(
            "coordinator restarted after the end: refuses the finished run, exit non-zero, summary kept",
            code not in (0, None) and refused is not None and (runs / "trec" / "summary.json").read_bytes() == before,
            f"exit code {code}",
        )

    def scrape(self, coordinator, ip):
        port = next(p["containerPort"] for p in coordinator.container["ports"] if p["name"] == "metrics")
        annotated = self.deployment["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")
        self.check("the scrape annotation names the metrics port", annotated == str(port), f"{annotated} vs {port}")
        try:
            text = urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5).read().decode()
        except OSError as e:
            text = str(e)
        alive, epochs = metric(text, "smalltext_workers_alive"), metric(text, "smalltext_epochs_total")
        self.check(
            "coordinator: /metrics",
            alive == len(self.workers) and (epochs or 0) >= 1,
            f"workers_alive {alive}, epochs_total {epochs}" + ("" if alive else f"; {text[:200]}"),
        )


def summary_of(runs):
    path = runs / "trec" / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="localhost/smalltext:latest")
    parser.add_argument("--work", type=Path, default=ROOT / ".smoke", help="host folder for the volumes (emptied first)")
    parser.add_argument("--keep", action="store_true", help="leave the containers and network for a look")
    opts = parser.parse_args()
    if opts.work.exists():
        shutil.rmtree(opts.work)
    check = Checks()
    cluster = Cluster(opts, check)
    cluster.check_manifests()
    podman("network", "rm", "--force", NETWORK, check=False)
    podman("network", "create", "--subnet", SUBNET, NETWORK)
    try:
        for phase in (cluster.one_epoch, cluster.faults):
            try:
                phase()
            except Exception as e:  # the checks so far stand; the phase's rest counts as failed
                check(f"{phase.__name__.replace('_', ' ')}: ran to its end", False, repr(e))
    finally:
        if not opts.keep:
            cluster.remove()
            podman("network", "rm", "--force", NETWORK, check=False)
    print(f"{check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
