"""The flags of a study arm's tuned settings, for a study's compare.sh: lr, local_lr, and T as --local-steps
(per-datapoint rows) or --encoder-steps. With --short-epochs E, an arm tuned to T >= 10 also gets --epochs E.

    python docs/tuned_flags.py docs/digits-study/tune-ARM/best.json ARM [--short-epochs E]
"""
import argparse
import json

p = argparse.ArgumentParser()
p.add_argument("best")
p.add_argument("arm")
p.add_argument("--short-epochs", type=int)
args = p.parse_args()
params = json.load(open(args.best))["params"]
flags = ["--lr", repr(params["lr"])]
if "local_lr" in params:
    flags += ["--local-lr", repr(params["local_lr"])]
T = params.get("local_steps", 1)
flags += ["--local-steps" if args.arm.startswith("meanfield") else "--encoder-steps", str(T)]
if args.short_epochs and T >= 10:
    flags += ["--epochs", str(args.short_epochs)]
print(" ".join(flags))
