"""Run tools as subprocesses, several at once, with reuse of finished runs and a progress line with an ETA.

Used by ``tools/run_study.py`` (many trainings, some in parallel), which ``tools/run_demo.py`` runs on CPU. A job
is done when its ``done_file`` exists and its ``marker`` (a JSON written after a successful run)
records the same command: a finished run is reused, one made with other settings is redone.
"""
import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["Job", "JobRunner", "format_duration", "log_tail"]


@dataclass
class Job:
    """``python <argv>`` run in ``cwd``.

    Attributes:
        name: shown in the progress lines.
        argv: the tool and its arguments (without the Python interpreter).
        done_file: exists after a successful run (e.g. the metrics file); checked after the run too.
        log_file: stdout and stderr of the run.
        marker: JSON written after a successful run; None: ``done_file`` alone says the job is done.
        group: jobs of one group are expected to take about the same time (the ETA's unit).
        resource_args: arguments appended to ``argv`` that do not change the result (loader workers): a finished
            run made with other ones is still reused.
    """

    name: str
    argv: List[str]
    done_file: str
    log_file: str
    marker: Optional[str] = None
    group: str = ""
    resource_args: List[str] = field(default_factory=list)

    def is_done(self) -> bool:
        if not os.path.exists(self.done_file):
            return False
        if self.marker is None:
            return True
        try:
            with open(self.marker) as f:
                return json.load(f).get("argv") == self.argv
        except (OSError, ValueError):
            return False


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _short_path(path: str, start: str) -> str:
    """``path`` relative to ``start`` when it lies inside, else absolute."""
    relative = os.path.relpath(path, start)
    return os.path.abspath(path) if relative.startswith(os.pardir) else relative


def log_tail(path: str, num_lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=num_lines))
    except OSError as e:
        return f"(no log: {e})"


class JobRunner:
    """Runs jobs as subprocesses of this Python, up to ``parallel`` at once, and prints progress lines.

    Args:
        cwd: working folder of the jobs.
        env: their environment.
        parallel: most jobs running at once.
        fresh: redo finished jobs too.
        prefix: start of every printed line, e.g. "[study]".
        heartbeat: seconds between progress lines while nothing finishes.
        echo: prints one line (flushing); replaceable in tests.
    """

    def __init__(self, cwd: str, env: Dict[str, str], parallel: int = 1, fresh: bool = False, prefix: str = "",
                 heartbeat: float = 60.0, echo: Callable[[str], None] = None):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.cwd, self.env, self.parallel, self.fresh = cwd, env, parallel, fresh
        self.prefix, self.heartbeat = prefix, heartbeat
        self.echo = echo or (lambda line: print(line, flush=True))
        self.durations: Dict[str, List[float]] = {}  # group -> seconds of the jobs run (not reused) here

    def _say(self, line: str):
        self.echo(f"{self.prefix} {line}" if self.prefix else line)

    def run(self, jobs: Sequence[Job]) -> List[Job]:
        """Run ``jobs`` (those not done yet); the failed ones, after every other job has run."""
        pending = deque()
        for job in jobs:
            if not self.fresh and job.is_done():
                self._say(f"{job.name}: already done ({_short_path(job.done_file, self.cwd)})")
            else:
                pending.append(job)
        total, finished, failed = len(pending), 0, []
        running: Dict[subprocess.Popen, tuple] = {}  # process -> (job, start time, open log file)
        start = last_report = time.time()
        while pending or running:
            while pending and len(running) < self.parallel:
                job = pending.popleft()
                proc, log = self._start(job)
                running[proc] = (job, time.time(), log)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                job, job_start, log = running.pop(proc)
                log.close()
                seconds = time.time() - job_start
                finished += 1
                if proc.returncode == 0 and os.path.exists(job.done_file):
                    self._finish(job)
                    self.durations.setdefault(job.group, []).append(seconds)
                    status = f"done in {format_duration(seconds)}"
                else:
                    failed.append(job)
                    why = f"exit {proc.returncode}" if proc.returncode else f"no {job.done_file}"
                    status = f"FAILED ({why}) after {format_duration(seconds)}; log {job.log_file}, its end:"
                self._progress(f"{job.name}: {status}", finished, total, start, pending, running)
                if job in failed:
                    self.echo(log_tail(job.log_file))
                last_report = time.time()
            if running and time.time() - last_report >= self.heartbeat:
                names = ", ".join(job.name for job, _, _ in running.values())
                self._progress(f"running: {names}", finished, total, start, pending, running)
                last_report = time.time()
        return failed

    def _start(self, job: Job):
        os.makedirs(os.path.dirname(os.path.abspath(job.log_file)), exist_ok=True)
        if job.marker and os.path.exists(job.marker):
            os.remove(job.marker)
        self._say(f"{job.name}: started")
        log = open(job.log_file, "w")
        proc = subprocess.Popen([sys.executable] + job.argv + job.resource_args, cwd=self.cwd, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        return proc, log

    def _finish(self, job: Job):
        if job.marker:
            os.makedirs(os.path.dirname(os.path.abspath(job.marker)), exist_ok=True)
            with open(job.marker, "w") as f:
                json.dump({"argv": job.argv, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)

    def _progress(self, what: str, finished: int, total: int, start: float, pending, running):
        eta = self.eta(list(pending), [(job, time.time() - t) for job, t, _ in running.values()])
        eta_text = "?" if eta is None else format_duration(eta)
        self._say(f"{what} | {finished}/{total} jobs, elapsed {format_duration(time.time() - start)}, ETA {eta_text}")

    def eta(self, pending: Sequence[Job], running: Sequence[tuple]) -> Optional[float]:
        """Seconds until every job has finished: each pending job takes the mean time of the finished jobs of its
        group (of all finished jobs when none of its group has finished), each running job that time less what
        it has run already, spread over ``parallel`` workers. None before any job has finished."""
        everything = [s for seconds in self.durations.values() for s in seconds]
        if not everything:
            return None if (pending or running) else 0.0

        def expected(job):
            seconds = self.durations.get(job.group) or everything
            return sum(seconds) / len(seconds)

        remaining = sum(expected(job) for job in pending)
        remaining += sum(max(0.0, expected(job) - elapsed) for job, elapsed in running)
        return remaining / self.parallel
