"""The last lines of `make demo`: where to look. Reads the demo folder's promotion.json and lineup.json.

    python tools/demo_summary.py outputs/demo-YYYYmmdd-HHMMSS
"""

import json
import sys
from pathlib import Path


def main() -> None:
    folder = Path(sys.argv[1])
    promotion = json.loads((folder / "promotion.json").read_text())
    lineup = json.loads((folder / "lineup.json").read_text())
    people = lineup["people"]
    print(f"champion: {promotion['uri']} (version {promotion['version']}, trial {promotion['trial']}, "
          f"{promotion['metric']} = {float(promotion['metric_value']):.3f})")
    print(f"frontal faces: {lineup['out']} ({lineup['outputs_with_a_face']} of {people} hold a face "
          f"that dlib's detector finds)")
    print(f"line-up: {lineup['picked_own']} of {people} outputs pick out their own person among the {people} "
          f"people's second photos, by the independent judge {lineup['judge']} (the first photos themselves: "
          f"{lineup['photos_picked_own']} of {people})")
    print(f"first photo | output | second photo: {lineup['grid']}")
    print(f"MLflow runs: {promotion['mlflow_ui']}")


if __name__ == "__main__":
    main()
