"""Write a tiny randomly initialised vidgen pipeline folder (smoke tests of the CLI; no download).

    python scripts/make_tiny_pipeline.py tiny-pipeline [--layout full|factorized] [--seed 0]

Its videos are noise-like: the weights are random.
"""

import argparse

from vidgen import VidGenPipeline
from vidgen.testing import tiny_components

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="folder to write (must not exist)")
    parser.add_argument("--layout", choices=("full", "factorized"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    VidGenPipeline(**tiny_components(args.layout, seed=args.seed)).save_pretrained(args.output)
    print(f"wrote {args.output}")
