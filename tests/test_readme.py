"""The README stays true: its training loop runs, its two commands are where CI and users find
them, the files it points to exist, and its result tables match the results files they cite."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster on a busy machine
    yield
    torch.set_num_threads(before)


def test_the_training_loop_runs_and_trains(
    one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("A training loop"), re.S)
    assert len(blocks) == 1, "one complete snippet under '## A training loop'"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 25
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    loss = namespace["loss"]
    assert isinstance(loss, torch.Tensor) and math.isfinite(loss.item())
    assert loss.item() < 0.5 * math.log(3)  # well below chance level for three classes
    assert re.match(r"loss [\d.]+; median warm-up scale [\d.]+", capsys.readouterr().out)


def test_the_two_commands_are_under_their_headings() -> None:
    text = _section("The two commands")
    for heading, tail in (("**Main job", "python -m benchmarks.demo"), ("**Tests**", "pytest")):
        start = text.index(heading)
        command = re.search(r"```bash\n(.*?)\n```", text[start:], re.S)
        assert command, f"no bash block after {heading}"
        line = command.group(1)
        assert line.startswith("pip install torch==2.13.0 && pip install -e '.[")
        assert line.endswith(tail)
    assert "'.[test,bench,examples]'" in text and "'.[bench]'" in text


def test_ci_reads_the_readme_test_command() -> None:
    """.ci/run takes the first bash line after a line starting with **Tests**."""
    awk = re.search(r"awk '(.*?)' README.md", (ROOT / ".ci/run").read_text())
    assert awk
    try:
        proc = subprocess.run(
            ["awk", awk.group(1), "README.md"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        pytest.skip("no awk")
    assert proc.stdout.strip() == (
        "pip install torch==2.13.0 && pip install -e '.[test,bench,examples]' && python -m pytest"
    )


def test_links_and_cited_results_files_exist() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    targets += re.findall(r"<!-- from (\S+) -->", README)
    assert "benchmarks/results/demo.md" in targets and "docs/warmup.md" in targets
    for t in targets:
        if not t.startswith("http"):
            assert (ROOT / t).exists(), t


def test_is_a_front_page() -> None:
    assert len(README.splitlines()) < 200
    assert "to be finalised" not in README
    # no word of the project's own history: no issue numbers, sessions or commit hashes
    commit = r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"
    for pattern in (r"\bissue \d", r"\bsessions?\b", commit):
        assert not re.search(pattern, README, re.I), re.search(pattern, README, re.I)


def test_robustness_table_matches_the_demo_results() -> None:
    """Every method's S, interval and 'stable up to' in the README are the committed demo's."""
    saved = json.loads((ROOT / "benchmarks/results/demo.json").read_text())
    rows = {}
    table = _section("Results").split("<!-- from benchmarks/results/demo.md -->")[1]
    for line in table.strip().splitlines():
        if line.startswith("<!--"):
            continue
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    ms = saved["summary"]["methods"]
    assert set(ms) <= set(rows), "every method of the demo is in the README table"
    for m, r in ms.items():
        lo, hi = r["S_interval"]
        top = "none" if r["stable_up_to"] is None else f"{r['stable_up_to']:g}"
        assert rows[m][:3] == [f"{r['S']:.3f}", f"{lo:.3f} to {hi:.3f}", top], m
    assert f"{len(saved['meta']['seeds'])} seeds" in _section("Results")
    # the verdict quoted below the table is the script's, word for word
    for sentence in saved["summary"]["verdict"]:
        assert f"> {sentence}" in table, sentence


def test_demo_paragraph_matches_the_demo_results() -> None:
    """The numbers of the paragraph below the demo's table: warmopt's final loss at the two
    highest rates and its warm-up per rate (demo.json), and the ramp's S, interval, 'stable up
    to' and blow-ups (demo_ramp.json)."""
    text = " ".join(_section("Results").split())
    saved = json.loads((ROOT / "benchmarks/results/demo.json").read_text())
    warm = {r["lr"]: r for r in saved["summary"]["warmopt_warmup"]}
    firsts = ", ".join(f"{warm[lr]['scale_first']:.2g}" for lr in sorted(warm)[:-1])
    assert f"median scale starts at {firsts} and {warm[max(warm)]['scale_first']:.1g}" in \
        text.replace("1.0,", "1,")
    reached = [warm[lr]["warm_at_median"] for lr in sorted(warm)]
    assert reached[-1] is None and warm[max(warm)]["still_warming"] == len(saved["meta"]["seeds"])
    steps = ", ".join(f"{x + 1e-9:.0f}" for x in reached[:-2])
    assert f"first reaches 1 after {steps} and {reached[-2] + 1e-9:.0f} of the 250 steps" in text
    runs = [r for r in saved["runs"] if r["method"] == "warmopt" and r["lr"] in (0.1, 0.3)]
    means = {lr: sum(r["final_loss"] for r in runs if r["lr"] == lr) / 12 for lr in (0.1, 0.3)}
    assert f"{means[0.1]:.3f} and {means[0.3]:.3f} at lr 0.1 and 0.3" in text, means
    ramp = json.loads((ROOT / "benchmarks/results/demo_ramp.json").read_text())
    assert ramp["meta"]["warmopt_policy"] == "ramp"
    r = ramp["summary"]["methods"]["warmopt"]
    lo, hi = r["S_interval"]
    assert (f"gives it S = {r['S']:.3f} (95 % interval {lo:.3f} to {hi:.3f}), stable up to "
            f"{r['stable_up_to']:g}") in text  # fmt: skip
    top = {x["lr"]: x for x in ramp["summary"]["warmopt_warmup"]}
    n = len(ramp["meta"]["seeds"])
    assert f"{top[0.1]['blown_up']} and {top[0.3]['blown_up']} of its {n} runs at lr 0.1" in text
    assert saved["summary"]["best"] == "warmopt"  # "the most LR-robust"


def test_step_cost_table_matches_the_step_cost_results() -> None:
    """Each README row's ratios are those of benchmarks/results/step_cost.md: the median while
    warming, the mean ratio while watching."""
    results: dict[tuple[str, str], list[str]] = {}
    text = (ROOT / "benchmarks/results/step_cost.md").read_text()
    step_time = text.split("## Step time")[1].split("\n## ")[0]
    for line in step_time.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 8 and cells[1] == "adam" and cells[2] in ("foreach", "fused", "single"):
            # layout, optimizer, mode, torch ms, warming ms, x torch, sampled x torch, warmed
            # ms, warmed x torch, watching x torch (mean), ...: the median before the [q1-q3]
            # brackets while warming, the mean ratio while watching
            results[(cells[0], cells[2])] = [cells[5].split()[0], cells[9]]
    layouts = {"4 × 2048²": "large", "TransformerEncoder": "transformer", "small tensors": "small"}
    table = _section("Results").split("<!-- from benchmarks/results/step_cost.md -->")[1]
    rows = [line for line in table.strip().splitlines() if line.startswith("| ")][1:]
    assert len(rows) >= 3
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        (layout,) = [v for k, v in layouts.items() if k in cells[0]]
        assert [c.rstrip("×") for c in cells[2:4]] == results[(layout, cells[1])], line


def test_quality_table_matches_the_quality_results() -> None:
    """The held-out and fresh held-out rows of the quality table -- S per task of no warm-up, the
    hand-tuned oracle, the best untuned rule of that task and warmopt -- and each set's aggregate
    row are those of benchmarks/results/quality.json."""
    saved = json.loads((ROOT / "benchmarks/results/quality.json").read_text())
    table = _section("Results").split("<!-- from benchmarks/results/quality.md -->")[1]
    rows = [line for line in table.strip().splitlines() if line.startswith("| ")][1:]
    ends = [i for i, r in enumerate(rows) if "aggregate" in r]
    assert len(ends) == 2, rows
    start = 0
    for split, end in zip(("heldout", "fresh"), ends):
        targets = saved["targets"][split]
        part = rows[start : end + 1]
        start = end + 1
        assert len(part) == len(targets["tasks"]) + 1, (split, part)
        for line in part[:-1]:
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            name = cells[0].split("`")[1]
            s = saved["tasks"][name]["summary"]
            best = targets["tasks"][name]["best_anchor"]
            expected = [f"{s['none']['sensitivity']:.3f}",
                        f"{s['linear_oracle']['sensitivity']:.3f}",
                        f"{s[best]['sensitivity']:.3f} ({best})",
                        f"{s['warmopt']['sensitivity']:.3f}"]  # fmt: skip
            assert cells[1:5] == expected, line
        agg = [c.strip().strip("*") for c in part[-1].strip("|").split("|")]
        none = [saved["tasks"][n]["summary"]["none"]["normalized_sensitivity"]
                for n in targets["tasks"]]  # fmt: skip
        assert agg[1] == f"{sum(none) / len(none):.3f}", part[-1]
        assert agg[2:5] == [f"{targets['aggregate_oracle_S']:.3f}",
                            f"{targets['aggregate_best_anchor_S']:.3f}",
                            f"{targets['aggregate_S']:.3f}"], part[-1]  # fmt: skip
