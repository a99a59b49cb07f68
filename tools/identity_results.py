"""docs/RESULTS.md's section "Recognisably the person": both judges side by side, from `evaluate --json` files.

Each file is what `frontalab evaluate --json FILE` wrote for one model (kept in docs/results/identity/, numbers
only); the section is written between the markers below in docs/RESULTS.md, replacing what was there, so the
table is never typed by hand.

    python tools/identity_results.py docs/results/identity/*.json [--out docs/RESULTS.md] [--notes docs/identity_notes.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- identity:start -->", "<!-- identity:end -->"
JUDGE, DLIB = "hse-faceres", "dlib-resnet"
# The identity issue's gates (by the judge, for both shipped champions) and targets.
GATES = ((JUDGE, "lineup_rank1", 0.35), (JUDGE, "auc_output_vs_photos", 0.90))
TARGETS = ((JUDGE, "lineup_rank1", 0.8), (JUDGE, "within_threshold", 0.8))


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def section(runs: dict[str, dict], notes: str = "") -> str:
    labels = list(runs)
    first = runs[labels[0]]
    lines = [START, "", "## Recognisably the person: the independent judge beside dlib", "",
             f"Measured by `frontalab evaluate --json` on `lfw-gray` people with 2+ photos whom no model trained on "
             f"({first['n_people']} people, {first['n_faces']} faces for the first row; every row the same people). "
             f"**{JUDGE}** is the judge no model trains, validates or is selected with; **{DLIB}** is the encoder "
             f"every model trains against. Line-up: {first['identity'][JUDGE]['lineup_size']} people, its own and "
             f"the rest drawn at random, each scored by their photo nearest the output other than the input. "
             f"`photos` is the photos themselves (each input taken as its own output): the ceiling.", "",
             "| model | judge: line-up rank-1 | judge: AUC output vs photos | judge: AUC among outputs | judge: within threshold "
             "| dlib: line-up rank-1 | dlib: AUC output vs photos | dlib: AUC among outputs | dlib: within threshold |",
             "|---|---|---|---|---|---|---|---|---|"]
    judge_photos, dlib_photos = first["identity"][JUDGE]["photos"], first["identity"][DLIB]["photos"]
    lines.append(f"| photos | {pct(judge_photos['lineup_rank1'])} | {judge_photos['auc_output_vs_photos']:.3f} | "
                 f"{judge_photos['auc_outputs']:.3f} | | {pct(dlib_photos['lineup_rank1'])} | "
                 f"{dlib_photos['auc_output_vs_photos']:.3f} | {dlib_photos['auc_outputs']:.3f} | |")
    for label in labels:
        j, d = runs[label]["identity"][JUDGE], runs[label]["identity"][DLIB]
        lines.append(f"| `{label}` | {pct(j['lineup_rank1'])} | {j['auc_output_vs_photos']:.3f} | {j['auc_outputs']:.3f} | "
                     f"{pct(j['within_threshold'])} | {pct(d['lineup_rank1'])} | {d['auc_output_vs_photos']:.3f} | "
                     f"{d['auc_outputs']:.3f} | {pct(d['within_threshold'])} |")
    lines += ["", "The faces issue's measures, the outputs' sharpness and colour on the same faces:", "",
              "| model | output size | a face (dlib's detector) | different people's spread | dlib AUC (95% interval) "
              "| blur ratio (1 = as sharp as real frontal photos) | colour cast, outputs / grey inputs (0-255) "
              "| mean abs yaw, out / in | mouth opening, out / in |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        r = runs[label]
        low, high = r["auc_outputs_ci95"]
        lines.append(f"| `{label}` | {r['output_size']} | {pct(r['output_face_detected'])} | "
                     f"{r['different_people_spread']:.3f} | {r['auc_outputs']:.3f} ({low:.3f}-{high:.3f}) | "
                     f"{r['blur_ratio']:.2f} | {r['output_colour_cast']:.1f} / {r['inputs_colour_cast']:.1f} | "
                     f"{r['mean_abs_yaw']:.1f}° / {r['inputs_mean_abs_yaw']:.1f}° | "
                     f"{r['mean_mouth_opening']:.3f} / {r['inputs_mean_mouth_opening']:.3f} |")
    lines += ["", "Gates of the identity issue (both shipped champions, by the judge) and targets, with the gap:", ""]
    for label in labels:
        if not label.startswith("pretrained-"):
            continue
        j = runs[label]["identity"][JUDGE]
        checks = [f"{key} {j[key]:.3f} {'meets' if j[key] >= bound else 'misses'} the gate {bound}" for _, key, bound in GATES]
        checks += [f"{key} {j[key]:.3f} against the target {bound}"
                   + ("" if j[key] >= bound else f" (short by {bound - j[key]:.3f})") for _, key, bound in TARGETS]
        lines.append(f"- `{label}`: " + "; ".join(checks) + ".")
    if notes:
        lines += ["", notes.strip()]
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="evaluate --json files; the label is the file's stem")
    parser.add_argument("--out", default=str(REPO / "docs" / "RESULTS.md"))
    parser.add_argument("--notes", default=str(REPO / "docs" / "identity_notes.md"),
                        help="analysis written by hand, included verbatim after the tables")
    args = parser.parse_args()
    runs = {Path(f).stem: json.loads(Path(f).read_text()) for f in args.files}
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else ""
    text = section(runs, notes)
    out = Path(args.out)
    doc = out.read_text() if out.exists() else ""
    if START in doc and END in doc:
        doc = doc[:doc.index(START)] + text + doc[doc.index(END) + len(END):]
    else:  # first time: after the title line
        head, _, rest = doc.partition("\n")
        doc = f"{head}\n\n{text}\n{rest}"
    out.write_text(doc)
    print(f"wrote the identity section of {out} from {len(runs)} evaluations")


if __name__ == "__main__":
    main()
