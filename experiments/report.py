"""Writes a benchmark's report (tables + figures) from the records of its runs.

    python experiments/report.py records/l1 --out reports/l1
    python experiments/report.py runs/l1_assl runs/l1_asl/results.jsonl --out reports/l1
    python experiments/report.py runs/l2/{assl,asl,cold,cold_random} --out runs/l2/report

Arguments are run directories (every *.jsonl below them is read) or results.jsonl
files; ASSL and ASL runs, warm and cold starts may be mixed (a cold start's rows are
their own: mode ASSL-cold, ASSL-cold-random). They are read by
`npc_jax.records.read_records`, file by file (typed round records; the files are
never modified). See `npc_jax.report` for what is written.
"""
import argparse
import sys

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories or results.jsonl files")
    parser.add_argument("--out", required=True, help="directory for report.md and the figures")
    args = parser.parse_args(argv)
    from npc_jax import report
    try:
        written = report.write_report(args.paths, args.out)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print("\n".join(map(str, written)))


if __name__ == "__main__":
    main()
