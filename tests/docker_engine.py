"""A real Docker Engine for the compose tests: Debian's dockerd on a socket, data root and
exec root of its own, started by the tests and stopped after them, and compose projects run
on it with the Compose CLI in the venv, as a user runs them.

What this machine lacks, and how it is made up for (../shared/NATIVE-STACK.md):
- the registry of official images is out of reach: the Debian base image the Dockerfiles name
  is made here from Debian's archive (mmdebstrap) and imported under that exact tag;
- the package proxy re-signs TLS: that base image trusts this machine's CA certificates;
- builds download from the archive and PyPI: a test-only override gives each built service
  the host's network for its build step (never the shipped files);
- no NAT: containers reach only each other and published ports (--ip-masq=false).
The engine's data root (images, build cache) is kept between runs, outside the checkout, so
a warm run builds nothing; containers, networks and volumes are removed at every start and
stop."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from mirakuru import UnixSocketExecutor

from native.settings import ROOT
from tests.compose_cli import COMPOSE_CLI, env_file

CACHE = Path(os.environ.get("ENGINE_CACHE_DIR") or Path.home() / ".cache" / "message-service")
BRIDGE_SYSCTLS = [
    Path("/proc/sys/net/bridge") / f"bridge-nf-call-{t}" for t in ("iptables", "ip6tables")
]
DEBIAN_MIRRORS = [
    "deb http://deb.debian.org/debian {suite} main",
    "deb http://deb.debian.org/debian {suite}-updates main",
    "deb http://deb.debian.org/debian-security {suite}-security main",
]
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Images no Debian package can stand in for: the engine tests leave these services out.
NOT_ON_THIS_ENGINE = {
    "grafana": "grafana/grafana (no Debian package or reachable registry)",
    "jaeger": "jaegertracing/jaeger (no Debian package or reachable registry)",
    "cadvisor": "ghcr.io/google/cadvisor (no Debian package or reachable registry)",
}


def base_images() -> set[str]:
    """The Debian base images the Dockerfiles name (FROM debian:<version>-slim)."""
    names = set()
    for dockerfile in (ROOT / "Dockerfile", ROOT / "monitoring" / "Dockerfile"):
        names |= set(re.findall(r"^FROM (debian:\S+)$", dockerfile.read_text(), re.M))
    return names


class Engine:
    """Debian's dockerd, private to the tests."""

    def __init__(self, data_root: Path = CACHE / "docker") -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the compose engine tests start dockerd, which needs root")
        self.run_dir = Path(tempfile.mkdtemp(prefix="msg-engine-", dir="/run"))
        self.socket = self.run_dir / "docker.sock"
        self.data_root = data_root
        self.log = self.run_dir / "dockerd.log"
        self.env = {"PATH": os.environ["PATH"], "DOCKER_HOST": f"unix://{self.socket}"}
        self._saved_sysctls: dict[Path, str] = {}
        self._dockerd: UnixSocketExecutor | None = None

    def start(self) -> None:
        """Start dockerd, then remove what an interrupted run may have left in its data root."""
        self.data_root.mkdir(parents=True, exist_ok=True)
        # Without Docker's own iptables rules, bridged packets between containers would
        # meet the host's FORWARD policy: keep them out of iptables while the engine runs.
        for path in BRIDGE_SYSCTLS:
            if path.exists():
                self._saved_sysctls[path] = path.read_text().strip()
                path.write_text("0")
        argv = [
            "dockerd",
            f"--host=unix://{self.socket}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--pidfile={self.run_dir / 'dockerd.pid'}",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--bridge=none",  # no default bridge: compose makes the networks it needs
        ]
        self._log = self.log.open("a")
        self._dockerd = UnixSocketExecutor(
            argv, str(self.socket), timeout=120, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._dockerd.start()
        self.docker("version")  # the API answers, not only the socket
        self.remove_everything_but_images()

    def stop(self) -> None:
        """Remove every container, network and volume, then stop dockerd; images stay."""
        try:
            if self._dockerd is not None and self._dockerd.running():
                self.remove_everything_but_images()
        finally:
            if self._dockerd is not None:
                self._dockerd.stop()
                self._log.close()
            for path, value in self._saved_sysctls.items():
                path.write_text(value)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop dockerd with its containers running and start it again, as a host reboot
        would: containers come back by their restart policies alone."""
        assert self._dockerd is not None
        self._dockerd.stop()
        self._dockerd.start()
        self.docker("version")

    def remove_everything_but_images(self) -> None:
        containers = self.docker("ps", "-aq").split()
        if containers:
            self.docker("rm", "-f", "-v", *containers)
        self.docker("network", "prune", "-f")
        self.docker("volume", "prune", "-f")

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        """The docker CLI against this engine; its standard output."""
        out = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"docker {shlex.join(args)}: {out.stderr}")
        return out.stdout

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        """docker inspect of containers, as JSON."""
        result: list[dict[str, Any]] = json.loads(self.docker("inspect", *names))
        return result

    def ensure_base_images(self) -> list[str]:
        """Make the Debian base images the Dockerfiles name, if the engine lacks them; the
        names of those made now."""
        made = []
        for tag in sorted(base_images()):
            if self.docker("image", "ls", "-q", tag).strip():
                continue
            self.import_debian(tag)
            made.append(tag)
        return made

    def import_debian(self, tag: str) -> None:
        """A minimal Debian root filesystem from the archive, trusting this machine's CA
        certificates (the package proxy re-signs TLS), imported as `tag`."""
        suite = {"12": "bookworm", "13": "trixie"}[tag.split(":")[1].split(".")[0].split("-")[0]]
        certs = " ".join(shlex.quote(str(p)) for p in sorted(LOCAL_CA_DIR.glob("*.crt")))
        hook = (
            f'mkdir -p "$1{LOCAL_CA_DIR}" "$1{CA_BUNDLE.parent}"'
            + (f' && cp {certs} "$1{LOCAL_CA_DIR}/"' if certs else "")
            + f' && cp {CA_BUNDLE} "$1{CA_BUNDLE}"'
            + ' && rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
        )
        mirrors = [m.format(suite=suite) for m in DEBIAN_MIRRORS]
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            subprocess.run(
                ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
                 f"--customize-hook={hook}", suite, str(tarball), *mirrors],
                check=True, timeout=900,
            )  # fmt: skip
            self.docker("import", str(tarball), tag)


@dataclass
class Project:
    """A compose project of the shipped files on the engine, with a .env like a user's."""

    engine: Engine
    name: str
    folder: Path
    files: tuple[Path, ...] = (ROOT / "docker-compose.yml",)
    settings: dict[str, str] = field(default_factory=dict)
    extra_services: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env_file = env_file(self.folder, **self.settings)

    @functools.cached_property
    def override(self) -> Path:
        """The test-only override: the host's network for every build step (the builds
        download from Debian's archive and PyPI), and the test's own extra services. Written
        once: it depends on the files only, not on the .env."""
        model = self.config(override=False)
        services: dict[str, Any] = {
            name: {"build": {"network": "host"}}
            for name, service in model["services"].items()
            if "build" in service
        }
        services.update(self.extra_services)
        path = self.folder / "test-override.yml"
        path.write_text(yaml.safe_dump({"services": services}))
        return path

    def argv(self, *args: str, override: bool = True) -> list[str]:
        files = [*self.files, self.override] if override else list(self.files)
        argv = [str(COMPOSE_CLI), "--project-directory", str(ROOT), "-p", self.name]
        for f in files:
            argv += ["-f", str(f)]
        return [*argv, "--env-file", str(self.env_file), *args]

    def compose(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 900,
        override: bool = True,
        stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """docker compose ARGS on the engine, with the shell environment a user has; its
        standard input and output from and to these files (a shell's < and >), if given."""
        env = {**self.engine.env, "PWD": str(ROOT), "HOME": str(self.folder)}
        out = subprocess.run(
            self.argv(*args, override=override),
            env=env,
            cwd=ROOT,
            stdin=stdin,
            stdout=stdout or subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"compose {shlex.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out

    def config(self, override: bool = True) -> dict[str, Any]:
        """The model compose resolves: of the shipped files (and the test override)."""
        out = self.compose("config", "--format", "json", override=override)
        model: dict[str, Any] = json.loads(out.stdout)
        return model

    def services_on_this_engine(self) -> list[str]:
        """Every service of the model (the test's own included) but those whose image
        cannot be had here."""
        return sorted(set(self.config()["services"]) - set(NOT_ON_THIS_ENGINE))

    def shipped_services(self) -> list[str]:
        """The services of the shipped files that can run here (not the test's own)."""
        return [s for s in self.services_on_this_engine() if s not in self.extra_services]

    def up(self, *services: str, timeout: float = 900) -> None:
        """up --build --wait of these services (default: all that can run here)."""
        names = list(services) or self.services_on_this_engine()
        self.compose("up", "--build", "--wait", "--wait-timeout", "300", "-d", *names,
                     timeout=timeout)  # fmt: skip

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """docker inspect of this project's containers (of one service), running or not."""
        labels = [f"label=com.docker.compose.project={self.name}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        filters = [a for label in labels for a in ("--filter", label)]
        ids = self.engine.docker("ps", "-aq", *filters).split()
        return self.engine.inspect(*ids) if ids else []

    def container(self, service: str) -> dict[str, Any]:
        (only,) = self.containers(service)
        return only

    def leftovers(self) -> dict[str, list[str]]:
        """This project's containers, networks and volumes still on the engine."""
        label = f"label=com.docker.compose.project={self.name}"
        return {
            kind: self.engine.docker(*ls, "--filter", label).split()
            for kind, ls in (
                ("containers", ("container", "ls", "-aq")),
                ("networks", ("network", "ls", "-q")),
                ("volumes", ("volume", "ls", "-q")),
            )
        }
