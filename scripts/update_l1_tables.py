"""Copies the L1 report's tables into BENCHMARKS.md and README.md (between markers).

    .venv/bin/python experiments/report.py records/l1 --out records/l1/report
    .venv/bin/python scripts/update_l1_tables.py

BENCHMARKS.md gets the accuracy, paired-difference, class-count and λ_min
sections of records/l1/report/report.md; README.md the accuracy table alone.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"accuracy": "Accuracy", "paired": "Paired differences to passive",
            "classes": "Classes of the acquired labels",
            "lambda": "NPC: the chosen batch's λ_min vs the random candidate batches"}


def section(report: str, title: str) -> str:
    start = report.index(f"## {title}\n")
    end = report.find("\n## ", start + 3)
    return report[start:end if end > 0 else None].split("\n", 1)[1].strip()


def replace_between(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- l1:{name}:begin -->", f"<!-- l1:{name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"markers {begin} / {end} not found")
    return re.sub(re.escape(begin) + ".*?" + re.escape(end),
                  lambda _: f"{begin}\n{body}\n{end}", text, flags=re.S)


def main():
    report = (ROOT / "records/l1/report/report.md").read_text()
    bodies = {name: section(report, title) for name, title in SECTIONS.items()}
    benchmarks = ROOT / "BENCHMARKS.md"
    text = benchmarks.read_text()
    for name, body in bodies.items():
        text = replace_between(text, name, body)
    benchmarks.write_text(text)
    accuracy = bodies["accuracy"]
    table = accuracy[accuracy.index("| strategy |"):].split("\n\n")[0]
    readme = ROOT / "README.md"
    readme.write_text(replace_between(readme.read_text(), "accuracy-table", table))
    print("updated BENCHMARKS.md (", ", ".join(bodies), ") and README.md (accuracy table)")


if __name__ == "__main__":
    main()
