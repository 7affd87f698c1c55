"""``bvit-interp early-exit``: exit heads on a frozen model, CE-AUROC training, threshold sweep (App. B, Table 5)."""

from __future__ import annotations

import argparse

from ..analysis.early_exit import DEFAULT_THRESHOLDS, EarlyExitOptions, early_exit, sweep_summary
from ..analysis.early_exit_plots import plot_exit_distribution, plot_tradeoff
from ..registry import analysis_key
from .common import (
    add_common_args,
    create_run,
    data_loader,
    fraction,
    load_models,
    nonneg_float,
    parse_list,
    positive_float,
    positive_int,
    print_summary,
    resolve_device,
    val_loader,
    with_model,
    write_tables,
)


def _thresholds(text: str) -> tuple[float, ...]:
    """'0.5,0.9,1' as confidence thresholds in [0, 1] (argparse type; 'nan' is refused)."""
    values = tuple(fraction(t.strip()) for t in text.split(",") if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated thresholds in [0, 1], got {text!r}")
    return values


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, "runs/early_exit")
    p.add_argument("--exits", type=parse_list, help="comma-separated 1-based steps with an exit (default: all but the last)")
    p.add_argument("--thresholds", type=_thresholds, default=DEFAULT_THRESHOLDS,
                   help="comma-separated confidence thresholds to sweep (1.0 = never exit)")
    p.add_argument("--train-limit", type=positive_int, default=5000, help="training images for the exit heads (train split)")
    p.add_argument("--epochs", type=positive_int, default=50, help="training epochs over the cached features (paper App. B: 50)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate of the exit heads")
    p.add_argument("--auroc-weight", type=nonneg_float, default=1.0, help="weight of the CE-AUROC confidence term (Eq. 10)")
    p.add_argument("--include-attention", action=argparse.BooleanOptionalAction, default=False,
                   help="also count the two attention matmuls in GFLOPs (ViT-B/16: 35.1); default off, the "
                        "paper's convention (qkv, proj, FFN, patch embedding and heads only; ViT-B/16: 33.70)")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    models = load_models(args, device)
    options = EarlyExitOptions(exits=args.exits, epochs=args.epochs, lr=args.lr, auroc_weight=args.auroc_weight,
                               thresholds=tuple(args.thresholds), include_attention=args.include_attention)
    for m in models:
        last = m.model.num_layers()
        if args.exits and any(not 1 <= s < last for s in args.exits):
            raise ValueError(f"--exits {','.join(map(str, args.exits))}: exit steps of model {m.label} must lie in "
                             f"1..{last - 1} (the last step uses the model's head)")
    loaders = [(val_loader(args, m.model.config)[0],  # data checked before the run exists
                data_loader(args.data, m.model.config, "train", args.train_limit, args.seed, args.batch_size,
                            args.workers)[0]) for m in models]
    out = create_run(args, analysis_key(__name__), models, train_limit=args.train_limit, **options.to_dict())
    tables: dict[str, list] = {"sweep": [], "exits": [], "distribution": [], "history": []}
    summaries = {}
    for m, (val, train) in zip(models, loaders, strict=True):
        heads, results = early_exit(m.model, train, val, options, args.seed, device)
        for name, df in results.items():
            tables[name].append(with_model(df, m.label))
        out.write_arrays(f"exit_heads_{m.label}", **{k: v.cpu().numpy() for k, v in heads.state_dict().items()})
        out.write_figure(f"exits_{m.label}", plot_exit_distribution(results["distribution"], f"{m.label}: exit step"))
        summaries[m.label] = sweep_summary(results["sweep"])
    write_tables(out, tables)
    out.write_figure("tradeoff", plot_tradeoff(out.read_table("sweep")))
    out.complete(summary=summaries)
    print_summary("early-exit", out, summaries)
    cols = ["model", "threshold", "accuracy", "mean_steps", "gflops", "ms_per_image"]
    print(out.read_table("sweep")[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0
