"""The command line every experiment shares: --quick, --out FILE (the result JSON, and the figure beside it as
FILE.png), --seed; prints and records the wall time."""
import argparse
import json
import os
import time


def main(doc: str, settings: dict, run_experiment, plot, quick_help: str, argv=None) -> dict:
    """run_experiment(settings["quick" or "full"], seed) -> a JSON-able dict; plot(result, png_path)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", help="write the result JSON here and the figure beside it (.png)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run_experiment(settings["quick" if args.quick else "full"], args.seed)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"total {result['seconds']} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
        plot(result, os.path.splitext(args.out)[0] + ".png")
    return result
