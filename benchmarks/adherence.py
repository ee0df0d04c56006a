"""How well a model obeys prompts in the embedded world, scored by its detector.

Generates one image for each of N captions of held-out colour/shape/background combinations
(never seen in training), reads each image back with ``generation.embedded.detector``, and
prints the fraction right per attribute and with every asked attribute right.

    python benchmarks/adherence.py --n 48
    python benchmarks/adherence.py --model /path/to/model --steps 20 --guidance 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generation.embedded.adherence import measure, prompts
from generation.engine import DiffusersEngine
from generation.model_info import describe_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("IMAGINE_MODEL", "embedded"))
    parser.add_argument("--n", type=int, default=48, help="captions to generate and score")
    parser.add_argument("--seen", action="store_true", help="score training triples instead")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--failures", action="store_true", help="list what went wrong")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = describe_model(args.model, Path(tempfile.mkdtemp(prefix="adherence-")) / "models")
    engine = DiffusersEngine(model, device="auto", dtype="auto", torch_threads=args.threads)
    cases = prompts(args.n, args.seed, held_out=not args.seen)
    found = measure(engine, model, cases, steps=args.steps, guidance=args.guidance, seed=args.seed)
    steps = args.steps or model.default_steps
    guidance = model.default_guidance if args.guidance is None else args.guidance
    result = {
        "model": model.model_id,
        "revision": model.revision,
        "held_out": not args.seen,
        "n": args.n,
        "steps": steps,
        "guidance": guidance,
        "scheduler": model.scheduler,
        "seconds_per_image": found.seconds_per_image,
        "accuracy": found.accuracy,
        "all_correct": found.all_correct,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{model.model_id} ({model.revision}), {args.n} "
        f"{'held-out' if not args.seen else 'seen'} captions, {steps} steps, guidance "
        f"{guidance:g}, {found.seconds_per_image * 1000:.0f} ms per image"
    )
    for name, fraction in found.accuracy.items():
        right = round(fraction * found.asked[name])
        print(f"  {name:<11} {fraction:6.1%}  ({right}/{found.asked[name]})")
    print(f"  {'all right':<11} {found.all_correct:6.1%}")
    if args.failures:
        for failure in found.failures:
            print(f"  wrong: {failure}")


if __name__ == "__main__":
    main()
