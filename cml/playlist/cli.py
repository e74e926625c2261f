"""`cml playlist`: a thin command over cml.playlist.hull and cml.playlist.files.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cml.errors import UsageError, check_output, count, non_negative, non_negative_int
from cml.playlist.files import playlist_format, playlist_frame, write_playlist
from cml.playlist.hull import MODES, SCALES, build_playlist, prepare, resolve_ids
from cml.playlist.scores import playlist_metrics, playlist_scores
from cml.search.index import Index
from cml.tables import add_table_arguments, check_at_most, read_cli_table

log = logging.getLogger(__name__)


def _ids(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _cmd_playlist(args: argparse.Namespace) -> int:
    if args.mode == "journey" and (args.start, args.end, args.margin) != (None, None, None):
        raise UsageError("--start, --end and --margin: not used by --mode journey (it runs from seed A to seed B)")
    if args.clusters is not None and not args.metrics:
        raise UsageError("--clusters sets the cluster baseline of --metrics: give --metrics too")
    for out in args.out:
        playlist_format(out)
        check_output(out)
    if args.metrics:
        check_output(args.metrics)
    seed_ids = _ids(args.seed_tracks)
    if not seed_ids:
        raise UsageError("--seed-tracks is empty: give one or more ids separated by commas")
    table = read_cli_table(args, l2=args.scale == "l2")
    for option, value in (("--length", args.length), ("--clusters", args.clusters)):
        check_at_most(value, option, len(table), f"tracks in {args.file}")
    seeds = resolve_ids(table.ids, seed_ids, "--seed-tracks ids")
    start = resolve_ids(table.ids, [args.start], "--start id")[0] if args.start is not None else None
    end = resolve_ids(table.ids, [args.end], "--end id")[0] if args.end is not None else None
    X = prepare(table.X, args.scale)
    # The index pays for its build (0.3 s at 100k tracks) in a journey (0.76 s -> 2 ms), not in one k-NN
    # baseline; it is cosine, so it needs unit rows.
    index = Index(X) if args.mode == "journey" and args.scale == "l2" else None
    playlist = build_playlist(X, seeds, args.length, mode=args.mode, dim=args.dim, margin=args.margin or 0.0,
                              start=start, end=end, index=index)
    frame = playlist_frame(table, X, playlist.order)
    for out in args.out:
        write_playlist(frame, out)
        log.info("wrote %s", out)
    scores = playlist_metrics(X, playlist.order, playlist.seeds, table.labels, playlist.projection.transform(X))
    if args.metrics:
        metrics = playlist_scores(X, playlist, table.labels, n_clusters=args.clusters, seed=args.seed, index=index)
        Path(args.metrics).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"region": playlist.region, "n_candidates": len(playlist.candidates), **scores}, indent=2))
    return 0


def register_cli(subparsers) -> None:
    """``cml playlist FILE --seed-tracks ID,ID,... --length N --out FILE.{m3u8,csv} [--mode hull|lp|journey]``."""
    p = subparsers.add_parser("playlist", description=__doc__.split("\n\n")[0])
    add_table_arguments(p)
    p.add_argument("--seed-tracks", required=True, help="ids of the seed tracks, separated by commas (journey: A,B)")
    p.add_argument("--length", type=count, required=True, help="tracks in the playlist")
    p.add_argument("--out", action="append", required=True,
                   help="playlist file, .m3u8 or .csv (repeat --out for both)")
    p.add_argument("--mode", choices=MODES, default="hull")
    p.add_argument("--dim", type=count, default=3, help="PCA dimension of the hull (hull mode; default 3)")
    p.add_argument("--margin", type=non_negative,
                   help="hull: push the facets out by this distance; lp: tolerance (L-infinity); default 0")
    p.add_argument("--scale", choices=SCALES, default="l2",
                   help="l2: unit rows (embeddings, default); standard: z-scored columns (raw features)")
    p.add_argument("--start", help="id of the first track (default: the first seed)")
    p.add_argument("--end", help="id of the last track (default: free)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the baselines' k-means and random draw")
    p.add_argument("--clusters", type=count, help="k of the cluster baseline (default: number of labels, or 8)")
    p.add_argument("--metrics", help="write metrics of the playlist and the baselines to this JSON file")
    p.set_defaults(func=_cmd_playlist)
