"""`cml cluster`: a thin command over cml.cluster.methods and cml.cluster.scores.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from cml.cluster import elki
from cml.cluster.costs import too_costly
from cml.cluster.grid import DENSITY, HDBSCAN_METHODS, n_labels
from cml.cluster.methods import EXACT, HIERARCHICAL, METHODS, NEEDS_K, cluster
from cml.cluster.scores import cluster_scores
from cml.errors import UsageError, check_output, count, non_negative, non_negative_int, positive
from cml.tables import add_table_arguments, check_at_most, read_cli_table, standardise

log = logging.getLogger(__name__)


def cluster_size(text: str) -> int:
    """HDBSCAN's smallest cluster: an integer >= 2 (a cluster of one point is noise)."""
    value = count(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 2")
    return value

# The methods each option applies to; given to another method, it would be silently ignored.
OPTION_METHODS = {"k": NEEDS_K, "height": set(HIERARCHICAL), "eps": {"dbscan", "elki-dbscan"},
                  "min_pts": set(DENSITY), "min_cluster_size": set(HDBSCAN_METHODS), "variant": {"elki-kmeans"}}


def _cmd_cluster(args: argparse.Namespace) -> int:
    unused = [f"--{name.replace('_', '-')}" for name, methods in OPTION_METHODS.items()
              if getattr(args, name) is not None and args.method not in methods]
    if unused:
        raise UsageError(f"{', '.join(unused)}: not used by --method {args.method}")
    if args.k is not None and args.height is not None:
        raise UsageError("give --k or --height, not both")
    for out in (args.out, args.metrics):
        if out:
            check_output(out)
    table = read_cli_table(args, l2=not args.no_normalise)
    if args.standardise:
        table.X = standardise(table.X)[0]  # as `load_tables` does for the grid's handcrafted baseline
    k = args.k
    if k is None and args.method in NEEDS_K and args.height is None:
        k = n_labels(table.labels)
        if not k:
            raise UsageError(f"--k is required for {args.method} ({args.file} has no labels to take it from)")
        log.info("k not given: using the %d distinct labels", k)
    for option, value in (("--k", k), ("--min-pts", args.min_pts), ("--min-cluster-size", args.min_cluster_size)):
        check_at_most(value, option, len(table), f"rows in {args.file}")
    opts = {name: getattr(args, name) for name in ("height", "eps", "min_pts", "min_cluster_size", "variant")
            if getattr(args, name) is not None}
    too_big = too_costly(args.method, *table.X.shape, budget=float("inf"))
    if too_big:  # it would exhaust memory, asked for or not
        raise UsageError(f"--method {args.method} {too_big}")
    slow = too_costly(args.method, *table.X.shape)
    if slow:  # asked for by name: run it, but say what it will cost
        log.warning("%s runs anyway, as asked; the grid would have %s", args.method, slow)
    result = cluster(table.X, args.method, k=k, seed=args.seed, normalise=not args.no_normalise, **opts)
    scores = {"method": args.method, **result.params, "seconds": result.seconds,
              **cluster_scores(table.X, result, table.labels, seed=args.seed)}
    if args.out:
        pd.DataFrame({"id": table.ids, "cluster": result.labels}).to_csv(args.out, index=False)
    if args.metrics:
        Path(args.metrics).write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2))
    return 0


def register_cli(subparsers) -> None:
    """``cml cluster FILE --method M [--k K] [--out FILE.csv] [--metrics FILE.json]``."""
    p = subparsers.add_parser("cluster", description=__doc__.split("\n\n")[0])
    add_table_arguments(p)
    p.add_argument("--method", required=True, choices=METHODS, metavar="METHOD",
                   help=f"exact: {', '.join(m for m in METHODS if m in EXACT)}; approximate (a k-NN graph, "
                        f"or k-means' local optimum): {', '.join(m for m in METHODS if m not in EXACT)}. "
                        "mst-single and mst-hdbscan are exact single linkage and HDBSCAN* in this process "
                        "(seconds at 20,000 rows); knn-single and knn-hdbscan the same over a k-NN graph "
                        "(a million rows)")
    p.add_argument("--k", type=count, help="number of clusters (default: number of distinct labels)")
    p.add_argument("--height", type=non_negative,
                   help="hierarchical (elki-* linkages, mst-single, knn-single): cut the dendrogram at this "
                        "height instead of k")
    p.add_argument("--eps", type=positive, help="DBSCAN radius (default: knee of the k-distance curve)")
    p.add_argument("--min-pts", type=count, help="DBSCAN/HDBSCAN neighbourhood size, the point included (default 5)")
    p.add_argument("--min-cluster-size", type=cluster_size, help="HDBSCAN smallest cluster (default 5)")
    p.add_argument("--variant", choices=elki.KMEANS_VARIANTS, help="elki-kmeans algorithm (default lloyd)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-normalise", action="store_true", help="cluster raw features, not L2-normalised rows")
    p.add_argument("--standardise", action="store_true",
                   help="z-score every column first (features in mixed units, like the handcrafted baseline: "
                        "the ClusterTesting notebook clusters it so)")
    p.add_argument("--out", help="write id,cluster CSV here (noise = -1)")
    p.add_argument("--metrics", help="write the metrics JSON here")
    p.set_defaults(func=_cmd_cluster)
