"""Memory while recordings are archived and served: it must stay flat, whatever their size.

`exocall simulator` serves each completed call's recording (a WAV of `--recording-seconds`,
16 000 bytes a second, streamed); `exocall serve` (one worker) archives it into a
directory, or into moto's S3 API with `--store s3`, then serves it back. The serve process's
resident memory is sampled every 10 ms: before the call, while its recording is fetched and
stored, and while it is downloaded whole from `GET /calls/{id}/recording` (against what it
held just before). A fresh `exocall serve` per size, so that no run inherits another's memory.

    .venv/bin/python -m bench.recordings
    .venv/bin/python -m bench.recordings --store s3 --mib 5 50 100
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import platform
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import fresh_database
from bench.callback_ingest import serve, server_env
from tests.support.processes import EXOCALL, free_ports
from tests.support.s3_server import FAKE_S3_KEY_ID, FAKE_S3_SECRET, new_bucket, start_moto

API_KEY = "bench-internal-key"
BYTES_PER_SECOND = 16_000


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class Sampler:
    """The highest resident memory of `pid` seen while the `with` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.01)


@dataclass(frozen=True)
class Run:
    mib: int
    size: int
    baseline: float
    archiving_peak: float
    archive_seconds: float
    before_serving: float
    serving_peak: float
    serve_seconds: float
    same_bytes: bool


def measure(api: str, pid: int, mib: int, number: str) -> Run:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=api, headers=headers, timeout=600) as client:
        baseline = rss_mib(pid)
        started = time.monotonic()
        with Sampler(pid) as archiving:
            placed = client.post("/calls", json={"from": number, "app_id": "926"})
            placed.raise_for_status()
            call_id = placed.json()["id"]
            while True:
                call = client.get(f"/calls/{call_id}").json()
                if (call.get("recording") or {}).get("status") == "archived":
                    break
                time.sleep(0.05)
        archive_seconds = time.monotonic() - started
        digest = hashlib.sha256()
        before_serving = rss_mib(pid)
        started = time.monotonic()
        with Sampler(pid) as serving, client.stream("GET", f"/calls/{call_id}/recording") as got:
            got.raise_for_status()
            for chunk in got.iter_bytes(1 << 20):
                digest.update(chunk)
        serve_seconds = time.monotonic() - started
    recording = call["recording"]
    return Run(
        mib=mib,
        size=recording["size"],
        baseline=baseline,
        archiving_peak=archiving.peak,
        archive_seconds=archive_seconds,
        before_serving=before_serving,
        serving_peak=serving.peak,
        serve_seconds=serve_seconds,
        same_bytes=digest.hexdigest() == recording["sha256"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["directory", "s3"], default="directory")
    parser.add_argument("--mib", type=int, nargs="+", default=[5, 50, 100])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        processes: list[subprocess.Popen[bytes]] = []
        moto = None
        try:
            settings = {
                "RECORDING_STORE": str(work / "recordings"),
                "JOBS_POLL_SECONDS": "0.2",
                "SIMULATOR_CALLBACK_DELAY_SECONDS": "0.2",
            }
            if args.store == "s3":
                moto, endpoint = start_moto(work)
                settings |= {
                    "RECORDING_STORE": f"s3://{new_bucket(endpoint)}/bench",
                    "RECORDING_S3_ENDPOINT": endpoint,
                    "RECORDING_S3_REGION": "us-east-1",
                    "RECORDING_S3_ACCESS_KEY_ID": FAKE_S3_KEY_ID,
                    "RECORDING_S3_SECRET_ACCESS_KEY": FAKE_S3_SECRET,
                }
            runs = []
            for index, mib in enumerate(args.mib):
                # A simulator per size: its recordings all last as long.
                sim_port, api_port = free_ports(2)
                seconds = mib * 1024 * 1024 / BYTES_PER_SECOND
                env = server_env(
                    asyncio.run(fresh_database()),
                    work,
                    API_KEYS=API_KEY,
                    EXOTEL_API_BASE_URL=f"http://127.0.0.1:{sim_port}",
                    EXOTEL_CALLER_ID="08030752400",
                    PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}",
                    **settings,
                )
                subprocess.run([EXOCALL, "migrate"], env=env, check=True, capture_output=True)
                argv = [EXOCALL, "simulator", "--port", str(sim_port), "--callback-delay", "0.2"]
                argv += ["--recording-seconds", f"{seconds:.1f}"]
                log = work / f"simulator-{index}.log"
                processes.append(serve(argv, env, sim_port, log, ready_path="/_simulator/log"))
                argv = [EXOCALL, "serve", "--port", str(api_port)]
                api = serve(argv, env, api_port, work / f"serve-{index}.log", ready_path="/healthz")
                processes.append(api)
                runs.append(measure(f"http://127.0.0.1:{api_port}", api.pid, mib, "09052161110"))
                for process in processes[-2:]:
                    process.terminate()
                    process.wait()
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
            if moto is not None:
                moto.stop()
    where = f"{platform.node()}, Python {platform.python_version()}"
    print(f"exocall recordings: {args.store} store; {where}")
    print(
        "size       rss before  peak archiving (+)  archive s"
        "  rss then  peak serving (+)  serve s  bytes"
    )
    for run in runs:
        print(
            f"{run.size / 2**20:6.1f} MiB {run.baseline:8.1f} MiB"
            f" {run.archiving_peak:8.1f} MiB ({run.archiving_peak - run.baseline:+5.1f})"
            f" {run.archive_seconds:8.1f}   {run.before_serving:6.1f} MiB"
            f" {run.serving_peak:8.1f} MiB ({run.serving_peak - run.before_serving:+5.1f})"
            f" {run.serve_seconds:8.2f}  {'same' if run.same_bytes else 'DIFFER'}"
        )


if __name__ == "__main__":
    main()
