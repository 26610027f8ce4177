"""kern_d2.study.jobs: parallel subprocess runs, reuse of finished ones, failures with their log tail, the ETA."""
import json
import os

import pytest

from kern_d2.study.jobs import Job, JobRunner, format_duration


def python_job(tmp_path, name: str, code: str, group: str = "") -> Job:
    """A job running ``code`` that must write ``<name>.done`` in the jobs' working folder."""
    return Job(name, ["-c", code], str(tmp_path / f"{name}.done"), str(tmp_path / "logs" / f"{name}.txt"),
               marker=str(tmp_path / f"{name}.json"), group=group)


def writes_done(name: str) -> str:
    return f"open('{name}.done', 'w').write('x'); print('{name} ran')"


def runner(tmp_path, lines, **kwargs) -> JobRunner:
    return JobRunner(str(tmp_path), dict(os.environ), prefix="[t]", echo=lines.append, **kwargs)


def test_jobs_run_in_parallel_failures_are_reported_and_the_others_go_on(tmp_path):
    lines = []
    jobs = [
        python_job(tmp_path, "a", writes_done("a")),
        python_job(tmp_path, "bad", "import sys; print('something broke here'); sys.exit(3)"),
        python_job(tmp_path, "silent", "print('exits 0 without its done file')"),
        python_job(tmp_path, "c", writes_done("c")),
    ]
    failed = runner(tmp_path, lines, parallel=2).run(jobs)
    assert [job.name for job in failed] == ["bad", "silent"]
    assert (tmp_path / "a.done").exists() and (tmp_path / "c.done").exists()
    text = "\n".join(lines)
    assert "bad: FAILED (exit 3)" in text and "something broke here" in text  # the log's tail
    assert "silent: FAILED (no " in text
    assert "4/4 jobs" in text
    assert json.loads((tmp_path / "a.json").read_text())["argv"] == jobs[0].argv
    assert not (tmp_path / "bad.json").exists()
    assert (tmp_path / "logs" / "a.txt").read_text() == "a ran\n"


def test_finished_jobs_are_reused_unless_their_command_changed_or_fresh(tmp_path):
    # each run adds a file to runs/
    count = ("import os, uuid; os.makedirs('runs', exist_ok=True); open('runs/' + uuid.uuid4().hex, 'w'); "
             "open('a.done', 'w')")
    lines = []
    job = python_job(tmp_path, "a", count)
    assert runner(tmp_path, lines).run([job]) == []
    assert runner(tmp_path, lines).run([job]) == []
    assert len(os.listdir(tmp_path / "runs")) == 1
    assert "[t] a: already done (a.done)" in lines
    changed = python_job(tmp_path, "a", count + "  # other settings")
    runner(tmp_path, lines).run([changed])
    assert len(os.listdir(tmp_path / "runs")) == 2
    runner(tmp_path, lines, fresh=True).run([changed])
    assert len(os.listdir(tmp_path / "runs")) == 3


def test_eta_from_the_mean_time_of_the_same_group(tmp_path):
    r = runner(tmp_path, [], parallel=2)
    pending = [python_job(tmp_path, n, "", group=g) for n, g in (("p1", "predcls"), ("s1", "sgcls"), ("d1", "sgdet"))]
    assert r.eta(pending, []) is None  # nothing finished yet
    r.durations = {"predcls": [10.0, 20.0], "sgcls": [40.0]}
    # predcls 15, sgcls 40, sgdet (no finished job of its own) the mean of all: 70 / 3; a running sgcls job
    # 25 s into its 40; all over 2 workers
    running = [(python_job(tmp_path, "s0", "", group="sgcls"), 25.0)]
    assert r.eta(pending, running) == pytest.approx((15 + 40 + 70 / 3 + 15) / 2)
    assert r.eta([], []) == 0.0


def test_format_duration():
    assert format_duration(5) == "0m05s"
    assert format_duration(125.4) == "2m05s"
    assert format_duration(3 * 3600 + 61) == "3h01m01s"
