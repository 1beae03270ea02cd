"""`clipforge explain --model M --image X --text "..." [--text ...] --out map.png`: where each text matches."""
from __future__ import annotations

import json
import os

from clipforge.cli._common import add_model_args, add_overwrite_arg, positive_int


def register(sub):
    p = sub.add_parser("explain", help="draw where in an image each text matches (similarity maps)",
                       description="One panel per text: the text's similarity map upsampled over the image, with "
                                   "its pooled cosine and a colour bar (the map's min and max). Methods: maskclip "
                                   "(dense value path; ViT and ResNet towers), tokens (dense last-block tokens; ViT "
                                   "and EfficientNet), gradcam (Grad-CAM of the pooled cosine; every tower), auto "
                                   "(the tower's dense default). See docs/explain.md.")
    add_model_args(p)
    p.add_argument("--image", required=True, help="the image file")
    p.add_argument("--text", action="append", default=[], required=True, help="a text to locate (repeatable)")
    p.add_argument("--method", default="auto", choices=("auto", "maskclip", "tokens", "gradcam"))
    p.add_argument("--size", type=positive_int, default=None,
                   help="pixels a side the image is squashed to before encoding (a multiple of the tower's cell: "
                        "the ViT patch, 32 for ResNet/EfficientNet; default the model's image size, at least 7 "
                        "cells a side); larger gives a finer map")
    p.add_argument("--max-texts", type=positive_int, default=16, help="most texts one call maps")
    p.add_argument("--out", default=None, help="write the figure as a PNG (a new file, or an earlier explain "
                                               "figure, which is replaced)")
    add_overwrite_arg(p, "OUT")
    p.add_argument("--json", action="store_true", help="print the maps as JSON (texts, grid, scores, maps, peaks)")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.cli._common import load_encoder_from_args
    from clipforge.data.display import shown
    from clipforge.errors import UsageError

    if len(args.text) > args.max_texts:  # before the model loads
        raise UsageError(f"{len(args.text)} --text given; --max-texts is {args.max_texts} (one map each)")
    if not os.path.isfile(args.image):
        raise UsageError(f"--image {args.image}: no such file")
    if args.out:
        from clipforge.explain.render import explain_output

        if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise UsageError(f"--out {args.out}: folder {os.path.dirname(os.path.abspath(args.out))} does not exist")
        explain_output(args.overwrite, param="out").vet(args.out)  # refused before the model loads
    from clipforge.explain import explain, render_explanation

    encoder = load_encoder_from_args(args)
    ex = explain(encoder, args.image, args.text, method=args.method, size=args.size, max_texts=args.max_texts)
    if args.json:
        print(json.dumps(ex.to_dict()))
    else:
        print(f"method {ex.method}, grid {ex.maps.shape[1]}x{ex.maps.shape[2]}, image {ex.image_size[0]}x"
              f"{ex.image_size[1]}")
        print(f"{'pooled':>7}  {'peak x,y':>9}  {'min':>7}  {'max':>7}  text")
        for t, (x, y) in enumerate(ex.peaks()):
            print(f"{float(ex.scores[t]):7.4f}  {f'{x},{y}':>9}  {float(ex.maps[t].min()):7.4f}  "
                  f"{float(ex.maps[t].max()):7.4f}  {shown(ex.texts[t])}")
    if args.out:
        render_explanation(args.image, ex, args.out, overwrite=args.overwrite,
                           title=f"{args.model}: {os.path.basename(args.image)}")
        if not args.json:
            print(f"map: {shown(args.out)}")
    return 0
