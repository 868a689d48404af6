"""DVC stage report: the front page reports/README.md and reports/summary.json (from config/claims.yml),
reports/accuracy.{md,csv}, the grid tables and reports/plots/*.png, from the pipeline's results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from bnnrepro.errors import run_cli
from bnnrepro.io import write_json, write_text
from bnnrepro.report import claims, comparison
from bnnrepro.report.accuracy import collect, to_markdown
from bnnrepro.report.plots import plot_claims, plot_reproduced_vs_reported, plot_runs, plot_rwth_curves


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=Path, default=Path("reports/runs"))
    p.add_argument("--pretrained", type=Path, default=Path("pretrained"))
    p.add_argument("--pretrained-results", type=Path, default=Path("reports/pretrained"))
    p.add_argument("--official-results", type=Path, default=Path("reports/official"),
                   help="infer@official_<name> results: published weights evaluated here")
    p.add_argument("--reference", type=Path, default=Path("reference"))
    p.add_argument("--recipes", type=Path, default=Path("config/sgdat/optimizers.yml"),
                   help="recipe file: its order is the comparison table's row order")
    p.add_argument("--claims", type=Path, default=Path("config/claims.yml"))
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)

    papers, claim_list = claims.load_claims(args.claims)
    results = claims.Results(args.runs, args.pretrained, args.pretrained_results, args.out)
    front = claims.evaluate(claim_list, results)
    plot_claims(front, args.out / "plots" / "claims.png")
    write_text(args.out / "README.md", claims.front_page(front, papers, "plots/claims.png", claims.fetch_statuses(results)))
    write_json(args.out / "summary.json", claims.summary(front))

    table = collect(args.runs, args.pretrained, args.pretrained_results, args.official_results)
    write_text(args.out / "accuracy.csv", table.to_csv(index=False))
    write_text(args.out / "accuracy.md", to_markdown(table))
    plot_rwth_curves(args.pretrained, args.reference, args.out / "plots" / "rwth_curves.png")
    plot_runs(args.runs, args.out / "plots" / "runs.png")
    plot_reproduced_vs_reported(table, args.out / "plots" / "reproduced_vs_reported.png")

    labels = [r.get("label", name) for name, r in yaml.safe_load(args.recipes.read_text()).items()]
    compare = comparison.comparison_table(args.runs, labels, args.pretrained, args.pretrained_results)
    bws = comparison.bws_table(args.runs, args.pretrained, args.pretrained_results)
    binsfo = comparison.method_table(args.runs, "binsfo_mnist_", args.pretrained, args.pretrained_results)
    finetune = comparison.finetune_table(args.runs)
    write_text(args.out / "comparison.csv", compare.to_csv(index=False))
    write_text(args.out / "bws_digits.csv", bws.to_csv(index=False))
    write_text(args.out / "binsfo_mnist.csv", binsfo.to_csv(index=False))
    write_text(args.out / "binsfo_finetune.csv", finetune.to_csv(index=False))
    write_text(args.out / "comparison.md", comparison.to_markdown(compare, bws, binsfo, finetune))
    comparison.plot_comparison(compare, args.out / "plots" / "comparison.png")
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
