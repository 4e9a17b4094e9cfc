"""The edge's ceiling: a bare nginx with the edge's TLS settings and headers answering the
body of a stored GET by itself (bench/nginx-ceiling.conf.template), with the edge's access
logs and without any, on free ports with a prefix folder of its own."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
from mirakuru import TCPExecutor

from bench.measure import CpuTimes, cpu_times, rss
from native.configs import nginx_values, render_template
from native.ports import free_port
from native.settings import ROOT, StackConfig
from tests.harness import START_TIMEOUT

TEMPLATE = ROOT / "bench" / "nginx-ceiling.conf.template"
VARIANTS = {"ceiling-log": "nginx, the edge's access logs", "ceiling-nolog": "nginx, no log"}
UNSAFE = set("'\\$\n")  # what the body may not hold inside nginx's '...'


@dataclass(frozen=True)
class Answer:
    """What the ceiling answers: a stored GET's body (final newline included) and headers."""

    body: str
    etag: str
    cache_control: str

    @classmethod
    def of(cls, response: requests.Response) -> Answer:
        """The answer the edge gave."""
        h = response.headers
        return cls(response.text, h.get("ETag", '""'), h.get("Cache-Control", "no-store"))


@dataclass
class Ceiling:
    """The running nginx and its two ports (variant name -> port)."""

    executor: TCPExecutor
    ports: dict[str, int]
    folder: Path

    def processes(self) -> list[psutil.Process]:
        """nginx's master and workers."""
        assert self.executor.process is not None
        top = psutil.Process(self.executor.process.pid)
        return [top, *top.children(recursive=True)]

    def targets(self) -> list[CeilingTarget]:
        """One target per variant: with the edge's logs, without."""
        return [CeilingTarget(self, name) for name in VARIANTS]

    def stop(self) -> None:
        """Stop nginx."""
        self.executor.stop()


@dataclass
class CeilingTarget:
    """One of the ceiling's servers, measured like an app target."""

    ceiling: Ceiling
    name: str
    parts: tuple[str, ...] = ("nginx",)

    @property
    def label(self) -> str:
        """e.g. "nginx, no log"."""
        return VARIANTS[self.name]

    def url(self, via: str) -> str:
        """Its HTTPS address (there is nothing behind it)."""
        return f"https://127.0.0.1:{self.ceiling.ports[self.name]}"

    def cpu_seconds(self) -> CpuTimes:
        """nginx's CPU time so far."""
        return cpu_times(("nginx", p) for p in self.ceiling.processes())

    def rss_mib(self) -> dict[str, float]:
        """nginx's resident memory."""
        return {"nginx": round(sum(rss(self.ceiling.processes())), 1)}


def render(folder: Path, answer: Answer, ports: dict[str, int]) -> Path:
    """The ceiling's nginx.conf in its prefix folder."""
    for text in (answer.body[:-1], answer.etag, answer.cache_control):
        if UNSAFE & set(text):
            raise ValueError(f"the ceiling cannot answer {text!r} verbatim")
    edge = nginx_values(StackConfig(state_dir=folder))  # the edge's certificate, key, user
    values = {
        "LOG_LISTEN": f"127.0.0.1:{ports['ceiling-log']}",
        "NOLOG_LISTEN": f"127.0.0.1:{ports['ceiling-nolog']}",
        "TLS_CERT": edge["TLS_CERT"],
        "TLS_KEY": edge["TLS_KEY"],
        "NGINX_RUN_DIR": str(folder),
        "NGINX_USER": edge["NGINX_USER"],
        "BODY": answer.body[:-1],
        "ETAG": answer.etag,
        "CACHE_CONTROL": answer.cache_control,
    }
    return render_template(TEMPLATE, values, folder / "nginx.conf")


def start_ceiling(folder: Path, answer: Answer) -> Ceiling:
    """Start the ceiling's nginx giving the answer of a GET from the edge's cache."""
    folder.mkdir(parents=True, exist_ok=True)
    if not answer.body.endswith("\n"):
        raise ValueError("the body of a GET ends with a newline")
    ports = {name: free_port() for name in VARIANTS}
    while len(set(ports.values())) < len(ports):
        ports["ceiling-nolog"] = free_port()
    conf = render(folder, answer, ports)
    argv = ["nginx", "-p", str(folder), "-c", str(conf), "-e", "stderr"]
    check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, check=False)
    if check.returncode:
        raise RuntimeError(f"{conf}: {check.stderr}")
    log = (folder / "nginx.log").open("ab")
    executor = TCPExecutor(
        argv,
        host="127.0.0.1",
        port=ports["ceiling-nolog"],
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=START_TIMEOUT,
    )
    executor.start()
    return Ceiling(executor, ports, folder)
