"""CPU encode throughput of probclip's towers beside open_clip's, with random weights, in one process.

Measures images/s of the ViT-B-16-ProLIP vision tower vs open_clip's ViT-B-16 vision tower, and texts/s of the
ViT-B-16-ProLIP text tower (native: padding mask) vs an open_clip text tower of the same width, depth, heads and
context length (64; configured like open_clip's SigLIP text towers: no causal mask, last-token pooling). Both
sides run in eval mode under ``torch.inference_mode`` and alternate repeat by repeat, so machine load hits both;
the reported number is the median over repeats and the ratio is probclip / open_clip (>= 1 means probclip is
at least as fast).

    python benchmarks/bench_encode.py [--image-batch 4] [--text-batch 16] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time_once(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def _compare(name: str, ours, theirs, inputs: torch.Tensor, repeats: int, unit: str) -> float:
    with torch.inference_mode():
        ours(inputs), theirs(inputs)  # warm-up
        ours_t, theirs_t = [], []
        for i in range(repeats):
            # alternate which side runs first so slow phases of a busy machine hit both
            pair = [(ours, ours_t), (theirs, theirs_t)]
            for fn, sink in pair if i % 2 == 0 else reversed(pair):
                sink.append(_time_once(fn, inputs))
    batch = inputs.shape[0]
    ours_rate, theirs_rate = batch / statistics.median(ours_t), batch / statistics.median(theirs_t)
    ratio = ours_rate / theirs_rate
    print(f"{name}: probclip {ours_rate:8.2f} {unit}/s   open_clip {theirs_rate:8.2f} {unit}/s   ratio {ratio:.3f}x")
    return ratio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-batch", type=int, default=4)
    parser.add_argument("--text-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("image", "text"), default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import open_clip
    from open_clip.transformer import TextTransformer

    import probclip

    model = probclip.create_model("ViT-B-16-ProLIP").eval()
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, threads {torch.get_num_threads()}, "
          f"repeats {args.repeats} (median)")
    results = {}
    if args.only in (None, "image"):
        reference = open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()
        images = torch.randn(args.image_batch, 3, 224, 224)
        results["image"] = _compare(
            f"vision ViT-B-16, batch {args.image_batch}", model.visual, reference, images, args.repeats, "images"
        )
        del reference
    if args.only in (None, "text"):
        cfg = model.config.text
        reference = TextTransformer(
            context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.width, heads=cfg.heads,
            layers=cfg.layers, output_dim=model.embed_dim, no_causal_mask=True, pool_type="last", proj_bias=True,
            embed_cls=False,
        ).eval()
        tokens = torch.randint(2, cfg.vocab_size, (args.text_batch, cfg.context_length))
        tokens[:, cfg.context_length // 2:] = cfg.pad_id  # half-padded captions, as real captions are
        results["text"] = _compare(
            f"text ctx {cfg.context_length} {cfg.layers}x{cfg.width}, batch {args.text_batch}",
            model.text, reference, tokens, args.repeats, "texts",
        )
    print("ratios (probclip / open_clip): " + ", ".join(f"{k} {v:.3f}x" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
