"""Package a trained decoder as a champion shipped with the code: frontalab/models/champions/NAME.pt + NAME.json.

    python tools/package_champion.py thesis --model models:/frontalizer@champion \
        --recipe "frontalab sweep sweeps/cpu_thesis.yaml --name cpu_thesis && frontalab promote cpu_thesis"
    frontalab evaluate --model pretrained:thesis --label pretrained-thesis --json /tmp/thesis.json
    python tools/package_champion.py thesis --evaluation /tmp/thesis.json   # adds the numbers to the sidecar

The .pt holds only what inference and fine-tuning need: the decoder's weights (matrices in float16, which
halves the file; buffers such as the feature statistics in float32) and its config, as tensors and numbers
(`weights_only` loads it). Evaluate the packaged file itself, as above, so the sidecar's numbers are the
shipped model's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from frontalab.cli import use_services
from frontalab.config import load_config
from frontalab.models.pretrained import NAMES, champion_config

FOLDER = Path(__file__).resolve().parent.parent / "frontalab" / "models" / "champions"


def package(name: str, spec: str, recipe: str) -> dict:
    from frontalab.training.sources import checkpoint_file
    from frontalab.training.checkpoints import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = load_checkpoint(checkpoint_file(spec, Path(tmp)))
    # Parameters are float16; buffers (feature mean/std, batch-norm statistics) stay float32.
    params = {k for k, v in ckpt["G"].items() if v.ndim >= 2 and "running_" not in k and "standardize" not in k}
    weights = {k: (v.half() if k in params else v.float()).contiguous() for k, v in ckpt["G"].items()}
    config = champion_config(ckpt["config"])
    FOLDER.mkdir(parents=True, exist_ok=True)
    torch.save({"G": weights, "config": config, "step": ckpt["step"], "dataset_hash": ckpt["dataset_hash"],
                "run_id": ckpt.get("run_id") or ""}, FOLDER / f"{name}.pt")
    sidecar = {"name": f"pretrained:{name}", "recipe": recipe, "source": spec, "run_id": ckpt.get("run_id") or "",
               "dataset_hash": ckpt["dataset_hash"], "dataset": config["data"]["path"], "step": ckpt["step"],
               "decoder": config["model"]["decoder"], "out_size": config["model"]["out_size"],
               "encoder": config["encoder"]["name"], "packaged": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"}
    (FOLDER / f"{name}.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def add_evaluation(name: str, results: Path, command: str) -> dict:
    path = FOLDER / f"{name}.json"
    sidecar = json.loads(path.read_text())
    sidecar["evaluation"] = {"command": command, **json.loads(results.read_text())}
    path.write_text(json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=NAMES)
    ap.add_argument("--model", help="the trained model: models:/NAME@ALIAS, a run id or a checkpoint")
    ap.add_argument("--recipe", help="the exact command(s) that trained it")
    ap.add_argument("--evaluation", type=Path, help="`frontalab evaluate --json` of the packaged model")
    ap.add_argument("--evaluation-command", default="", help="the command that wrote --evaluation")
    args = ap.parse_args()
    if args.model:
        if not args.recipe:
            ap.error("--model needs --recipe: the sidecar must say how the model was trained")
        from frontalab.training.sources import RUN_ID

        use_services(load_config(None, []), args.model.startswith(("models:/", "s3://")) or bool(RUN_ID.fullmatch(args.model)))
        print(json.dumps(package(args.name, args.model, args.recipe), indent=1))
    if args.evaluation:
        print(json.dumps(add_evaluation(args.name, args.evaluation, args.evaluation_command), indent=1))
    if not (args.model or args.evaluation):
        ap.error("give --model, --evaluation or both")


if __name__ == "__main__":
    main()
