"""Average the weights of several trained models of one architecture (a model soup).

    python scripts/average_models.py --out runs/soup/transformer_causal \
        vidgen/default_model/transformer_causal runs/sfpp_reg1/transformer_causal [--weights 0.5,0.5]

Each input is a diffusers model folder (``config.json`` and safetensors weights) of the same class and
config, e.g. two causal students distilled by different runs from the same teacher. Fine-tuned from
one start, such models usually sit in one basin, where the mean of their weights is a model of its own
(Wortsman et al., model soups). The output folder is written through a temporary folder and never
replaced; ``--dtype float16`` stores it as the embedded default stores its students.
"""

import argparse
from pathlib import Path

import torch

from vidgen.training.checkpoint import average_models, save_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="model folders to average (two or more)")
    p.add_argument("--out", required=True, help="model folder to write (must not exist)")
    p.add_argument(
        "--weights", default=None, help="comma-separated, one per folder, summing to 1 (default: equal)"
    )
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        p.error(f"--out {out} exists; give a new folder")
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    try:
        model = average_models(args.folders, weights)
    except ValueError as e:
        p.error(str(e))
    save_model(model.to(getattr(torch, args.dtype)), out)
    print(
        f"wrote {out}: the mean of {len(args.folders)} models" + (f", weights {weights}" if weights else "")
    )


if __name__ == "__main__":
    main()
