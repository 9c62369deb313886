"""Write the embedded shapes data to disk as real data: PNG files, open_clip CSVs and a Karpathy JSON.

Usage::

    python -m geomix.data.export --out DIR --size 512 --styles dark --split test [--split val ...]

Layout of ``DIR``: ``images/<split>/<index>.png``; ``<split>.csv`` (tab-separated, columns ``filepath``
``title`` and ``label``, one row per caption, paths relative to ``DIR``; ``label`` is the class name,
e.g. ``red circle``, for ``data.csv_label_key=label``); ``dataset_karpathy.json`` with every
exported split (Karpathy format plus ``label`` per image and top-level ``class_prompts``). PNG is lossless,
so the CSV and JSON loaders give back exactly the embedded pixels and captions. The JSON is rewritten
with the splits of this call only.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from geomix.data.shapes import SPLITS, STYLES, ShapesData, class_names, class_prompts

log = logging.getLogger(__name__)

JSON_NAME = "dataset_karpathy.json"


def export_shapes(
    out: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    size: int = 64,
    styles: Sequence[str] = ("dark",),
    seed: int = 0,
    image_size: int = 32,
    captions_per_image: int = 5,
) -> dict[str, Path]:
    """Export ``size`` samples of each split; returns the written files (``<split>`` CSVs and ``json``)."""
    out = Path(out)
    # Building every split first validates all arguments before anything is written.
    sets = {
        s: ShapesData(s, size, tuple(styles), seed=seed, image_size=image_size,
                      captions_per_image=captions_per_image)
        for s in dict.fromkeys(splits)
    }
    written: dict[str, Path] = {}
    images, sent_id = [], 0
    for split, data in sets.items():
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        csv_path = out / f"{split}.csv"
        tmp = csv_path.with_name(csv_path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["filepath", "title", "label"])
            names = class_names()
            for i in range(len(data)):
                name = f"{i:06d}.png"
                Image.fromarray(data.image(i)).save(folder / name)
                caps = data.captions(i)
                writer.writerows([f"images/{split}/{name}", c, names[data.label(i)]] for c in caps)
                images.append({
                    "filepath": f"images/{split}",
                    "filename": name,
                    "split": split,
                    "imgid": len(images),
                    "label": data.label(i),
                    "style": data.style(i),
                    "sentids": list(range(sent_id, sent_id + len(caps))),
                    "sentences": [
                        {"raw": c, "tokens": c.split(), "imgid": len(images), "sentid": sent_id + k}
                        for k, c in enumerate(caps)
                    ],
                })
                sent_id += len(caps)
        tmp.replace(csv_path)
        written[split] = csv_path
    meta = {"dataset": "geomix-shapes", "seed": seed, "styles": list(styles),
            "class_prompts": class_prompts(), "images": images}
    json_path = out / JSON_NAME
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(json_path)
    written["json"] = json_path
    return written


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m geomix.data.export", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=64, help="images per split")
    p.add_argument("--styles", nargs="+", default=["dark"], choices=STYLES)
    p.add_argument("--split", nargs="+", action="extend", choices=SPLITS, help="splits (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--captions-per-image", type=int, default=5)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    written = export_shapes(
        args.out,
        splits=args.split or SPLITS,
        size=args.size,
        styles=args.styles,
        seed=args.seed,
        image_size=args.image_size,
        captions_per_image=args.captions_per_image,
    )
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
