"""``python -m benchmarks --check``: a section is stale exactly when the code it measures changed
after its numbers (checked in a throwaway git repository)."""

import subprocess

import pytest

import benchmarks.__main__ as runner

BENCH = '''"""A fake benchmark."""
from benchmarks import helper


def main():
    return 0
'''


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def commit_all(root, message):
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository with a package, a benchmark importing a helper, a README, and an unrelated
    benchmark; the runner's results folder inside it."""
    (tmp_path / "otofx").mkdir()
    (tmp_path / "otofx" / "core.py").write_text("X = 1\n")
    bench = tmp_path / "benchmarks"
    (bench / "results").mkdir(parents=True)
    (bench / "fake_bench.py").write_text(BENCH)
    (bench / "helper.py").write_text("Y = 1\n")
    (bench / "other_bench.py").write_text('"""Other."""\n\n\ndef main():\n    return 0\n')
    (tmp_path / "README.md").write_text("hello\n")
    git(tmp_path, "init", "-q")
    commit = commit_all(tmp_path, "first")
    monkeypatch.setattr(runner, "RESULTS_DIR", bench / "results")
    monkeypatch.setattr(runner, "HERE", bench)
    scripts = {s.name: s for s in runner.discover(bench)}
    for name in ("fake_bench", "other_bench"):
        measures = runner.measured_paths(name, bench)
        stamp = {**runner.section_stamp(measures, tmp_path), "commit": commit}
        runner.Outcome(scripts[name], ["python", "-m", f"benchmarks.{name}"], 1.0, "body", True,
                       "now", stamp, measures).save()
    return tmp_path, [scripts["fake_bench"], scripts["other_bench"]]


def stale_names(root, scripts):
    outcomes = [runner.Outcome.load(s) for s in scripts]
    return [line.split(":")[0] for line in runner.stale(outcomes, root)]


def test_a_benchmark_measures_the_package_its_script_and_the_helpers_it_imports(repo):
    root, _ = repo
    paths = runner.measured_paths("fake_bench", root / "benchmarks")
    assert {"otofx/", "benchmarks/fake_bench.py", "benchmarks/helper.py"} <= set(paths)
    assert "benchmarks/other_bench.py" not in paths


def test_sections_are_current_until_their_measured_code_changes(repo):
    root, scripts = repo
    assert stale_names(root, scripts) == []
    (root / "README.md").write_text("changed\n")             # measured by nobody
    commit_all(root, "docs")
    assert stale_names(root, scripts) == []
    (root / "benchmarks" / "helper.py").write_text("Y = 2\n")  # imported by fake_bench only
    commit_all(root, "helper")
    assert stale_names(root, scripts) == ["fake_bench"]
    (root / "otofx" / "core.py").write_text("X = 2\n")         # measured by every benchmark
    commit_all(root, "core")
    assert stale_names(root, scripts) == ["fake_bench", "other_bench"]


def test_unstamped_and_uncommitted_sections_are_stale(repo):
    root, scripts = repo
    (root / "otofx" / "core.py").write_text("X = 3\n")          # not committed
    dirty = runner.section_stamp(runner.measured_paths("other_bench", root / "benchmarks"), root)
    assert dirty["dirty_measured"] == ["otofx/core.py"]
    old = runner.Outcome.load(scripts[0])
    old.stamp = {}
    old.save()
    outcome = runner.Outcome.load(scripts[1])
    outcome.stamp = {**outcome.stamp, "dirty_measured": dirty["dirty_measured"]}
    outcome.save()
    assert stale_names(root, scripts) == ["fake_bench", "other_bench"]


def test_check_exits_non_zero_and_names_the_stale_section(repo, capsys):
    root, scripts = repo
    assert runner.check(scripts, root) == 0
    (root / "benchmarks" / "fake_bench.py").write_text(BENCH + "# faster\n")
    commit_all(root, "bench")
    assert runner.check(scripts, root) == 1
    err = capsys.readouterr().err
    assert "fake_bench: measured code changed" in err and "benchmarks/fake_bench.py" in err
    assert "other_bench" not in err


def test_jobs_reach_only_the_benchmarks_that_accept_them():
    with_jobs = runner.Script("a", "A.", {"--jobs", "--out"})
    without = runner.Script("b", "B.", {"--out"})
    assert runner.command(with_jobs, False, 3)[3:5] == ["--jobs", "3"]
    assert "--jobs" not in runner.command(without, False, 3)
