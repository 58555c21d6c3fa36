"""`python -m vlm.inspect attention|logit-lens`: look inside a nanoVLM-format model.

    python -m vlm.inspect attention --model demo --image demo --question "How many orange objects are there?" \\
        --layer 3 --head 3 [--all-views]
    python -m vlm.inspect logit-lens --model demo --image demo --question "..." --layers 2 4 [--top-k 5]

The library is `vlm.inspection` (data) and `vlm.inspect_draw` (PNG and HTML); this module only parses,
so --help answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vlm.cli import make_parser, run

logger = logging.getLogger("vlm.inspect")

MODEL_HELP = (
    "`demo` (the shipped demo teacher), `default` (nanoVLM's 460M config with random weights: the tools run, "
    "the pictures mean nothing), a checkpoint folder or a hub id"
)
TOKENIZER_HELP = (
    "tokenizer folder or hub id (default: the checkpoint's tokenizer/ folder, else its lm_tokenizer; for "
    "`default`, the demo word tokenizer, which has nanoVLM's image tokens: question words it lacks enter "
    "the prompt as <unk>, predicted ids beyond it print as #id)"
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--tokenizer", default=None, help=TOKENIZER_HELP)
    parser.add_argument(
        "--compression",
        default=None,
        help="inspect the student this CompressionConfig (JSON text or file) makes of the model, e.g. "
        "'{\"token_grid\": 4}'",
    )
    parser.add_argument("--image", required=True, help="image file, or `demo` for a demo-world scene")
    parser.add_argument("--question", required=True, help="the question, asked as the evaluator asks it")
    parser.add_argument(
        "--choices", nargs="+", default=None, help="2-4 choices: ask it as an MCQ (default: direct answer)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo scene and of random weights")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the PNG and the HTML page (default: .cache/inspect under $VLMC_HOME or the "
        "current folder)",
    )
    parser.add_argument(
        "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging and full tracebacks"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "vlm.inspect",
        "Look inside a nanoVLM-format model: one decoder head's attention from the question to the image\n"
        "tokens, or a logit lens over the image tokens. Each command writes a PNG (Pillow) and an offline\n"
        "HTML page (plotly.js inline) and prints its numbers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    attention = sub.add_parser(
        "attention",
        formatter_class=parser.formatter_class,
        help="one decoder head's attention from each question token to each image token",
        description="Attention of one head from each question token to each image token of the global view\n"
        "(with --all-views, of every view), cut from the full attention matrix of the real forward pass\n"
        "(eager attention for that pass, so every full row sums to 1), laid out on the token grid.",
    )
    _common(attention)
    attention.add_argument("--layer", type=int, required=True, help="decoder block, 0-based (nanoVLM: 0..31)")
    attention.add_argument("--head", type=int, required=True, help="attention head, 0-based (nanoVLM: 0..14)")
    attention.add_argument("--all-views", action="store_true", help="every view, not only the global one")
    lens = sub.add_parser(
        "logit-lens",
        formatter_class=parser.formatter_class,
        help="the tokens each image token of the global view would predict after L decoder blocks",
        description="For each image token of the global view: the top-k tokens of the LM head applied to the\n"
        "hidden state after L decoder blocks and the final norm. L counts blocks: 0 = the embeddings, the\n"
        "number of blocks (nanoVLM: 32) = the model's own output.",
    )
    _common(lens)
    lens.add_argument("--layers", type=int, nargs="+", required=True, help="depths L, e.g. 16 32")
    lens.add_argument("--top-k", type=int, default=5, help="tokens listed per image token")
    return parser


def _prepare(args: argparse.Namespace):
    from vlm.compression import compress
    from vlm.config import CompressionConfig
    from vlm.inspection import load_image, load_model, prepare_prompt

    # Cheap checks first: building nanoVLM's 460M model takes a minute.
    image = load_image(args.image, args.seed)
    compression = CompressionConfig.from_json(args.compression) if args.compression else None
    model, tokenizer = load_model(args.model, args.tokenizer, args.seed)
    if compression is not None:
        model = compress(model, compression).eval()
    return model, tokenizer, prepare_prompt(model, tokenizer, image, args.question, args.choices)


def run_attention(args: argparse.Namespace) -> dict:
    from vlm import inspect_draw
    from vlm.inspection import attention_map, default_out

    model, _, prompt = _prepare(args)
    amap = attention_map(model, prompt, args.layer, args.head)
    views = list(range(prompt.images.shape[0])) if args.all_views else [0]
    data = inspect_draw.attention_figure_data(amap, prompt, views, model_name=args.model)
    out = args.out or default_out()
    stem = f"attention_layer{args.layer}_head{args.head}" + ("_all_views" if args.all_views else "")
    png = inspect_draw.attention_png(data, out / f"{stem}.png")
    html = inspect_draw.attention_html(data, out / f"{stem}.html")
    global_mass = amap.question_to_view(prompt, 0).sum(-1)  # [Q]: share of each row on the global view
    return {
        "layer": args.layer,
        "head": args.head,
        "sequence_length": int(prompt.input_ids.shape[0]),
        "views": len(views),
        "question_tokens": [prompt.labels[i] for i in prompt.question_positions],
        "attention_on_global_view": [round(float(v), 4) for v in global_mass],
        "max_row_sum_error": float((amap.weights.sum(-1) - 1).abs().max()),
        "png": str(png),
        "html": str(html),
    }


def run_logit_lens(args: argparse.Namespace) -> dict:
    from vlm import inspect_draw
    from vlm.inspection import default_out, logit_lens, token_label

    model, tokenizer, prompt = _prepare(args)
    lens = logit_lens(model, prompt, args.layers, args.top_k, positions=prompt.image_positions[0])
    data = inspect_draw.lens_figure_data(lens, tokenizer, prompt, model_name=args.model)
    out = args.out or default_out()
    stem = "logit_lens_layers" + "-".join(str(layer) for layer in args.layers)
    png = inspect_draw.lens_png(data, out / f"{stem}.png")
    html = inspect_draw.lens_html(data, out / f"{stem}.html")
    for layer in args.layers:
        print(f"layer {layer} of {lens.n_blocks}: top-{args.top_k} tokens per image token of the global view")
        for index, cell in enumerate(lens.cells[0].tolist()):
            row, col = divmod(cell, lens.grid_side)
            words = ", ".join(
                f"{token_label(tokenizer, int(t))} {float(p):.2g}"
                for t, p in zip(lens.ids[layer][index], lens.probs[layer][index])
            )
            print(f"  ({row},{col}) {words}")
    return {"layers": list(args.layers), "n_blocks": lens.n_blocks, "png": str(png), "html": str(html)}


def _run(args: argparse.Namespace) -> int:
    summary = run_attention(args) if args.command == "attention" else run_logit_lens(args)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Bad input the library rejects (a layer out of range, a missing image, a bad compression) is one line.
    return run(_run, build_parser(), argv, user_errors=(ValueError, FileNotFoundError, OSError))


if __name__ == "__main__":
    sys.exit(main())
