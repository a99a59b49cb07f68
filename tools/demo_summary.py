"""The last lines of `make demo`: where to look. Reads the demo folder's promotion.json and frontalize.json.

    python tools/demo_summary.py outputs/demo-YYYYmmdd-HHMMSS
"""

import json
import sys
from pathlib import Path


def main() -> None:
    folder = Path(sys.argv[1])
    promotion = json.loads((folder / "promotion.json").read_text())
    faces = json.loads((folder / "frontalize.json").read_text())
    print(f"champion: {promotion['uri']} (version {promotion['version']}, trial {promotion['trial']}, "
          f"{promotion['metric']} = {float(promotion['metric_value']):.3f})")
    print(f"frontal faces: {faces['out']} ({faces['outputs_with_a_face']} of {faces['written']} hold a face "
          f"that dlib's detector finds)")
    print(f"input | output grid: {faces.get('grid', '(none)')}")
    print(f"MLflow runs: {promotion['mlflow_ui']}")


if __name__ == "__main__":
    main()
