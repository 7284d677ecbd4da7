"""Writes a benchmark's report (tables + figures) from the records of its runs.

    python experiments/report.py records/l1 --out reports/l1
    python experiments/report.py runs/l1_assl runs/l1_asl/results.jsonl --out reports/l1
    python experiments/report.py runs/l2/{assl,asl,cold,cold_random} --out runs/l2/report
    python experiments/report.py records/l2 --out records/l2/report --embedding pool.npy

Arguments are run directories (every *.jsonl below them is read) or results.jsonl
files; ASSL and ASL runs, warm and cold starts may be mixed (a cold start's rows are
their own: mode ASSL-cold, ASSL-cold-random). They are read by
`npc_jax.records.read_records`, file by file (typed round records; the files are
never modified). See `npc_jax.report` for what is written. `--embedding` (an (N, d)
.npy of the records' pool, e.g. the pretrained encoder's features) adds where the
acquired points lie in it.
"""
import argparse
import sys

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories or results.jsonl files")
    parser.add_argument("--out", required=True, help="directory for report.md and the figures")
    parser.add_argument("--embedding", help="optional (N, d) .npy embedding of the pool")
    args = parser.parse_args(argv)
    from npc_jax import report
    try:
        embedding = None
        if args.embedding:
            import numpy as np
            embedding = np.load(args.embedding)
        written = report.write_report(args.paths, args.out, embedding)
    except (ValueError, OSError) as error:   # OSError: an unreadable --embedding
        sys.exit(f"error: {error}")
    print("\n".join(map(str, written)))


if __name__ == "__main__":
    main()
