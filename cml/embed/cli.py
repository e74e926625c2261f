"""`cml embed MODEL (AUDIO_DIR | --tracks FILE) --out FILE`: a thin command over cml.embed.library."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cml.data.scan import SKIP_COLUMNS, scan_audio
from cml.embed.library import EmbedSettings, Shard, embed_library, open_model, split_rows
from cml.embed.tracks import (
    CROP_MULTIPLES,
    DEFAULT_CROP_SECONDS,
    DEFAULT_WORKERS,
    MODES,
    TRAINING_CROP,
    WINDOW_CROPS,
    Embedded,
)
from cml.embed.tracks import __doc__ as tracks_doc
from cml.errors import CmlError, UsageError, check_input_file, check_output, non_negative_int, positive
from cml.tables import check_table_suffix, part_path, read_tracks


def _read_tracks(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tracks, files skipped while scanning) from --tracks or AUDIO_DIR."""
    if args.tracks:
        tracks = read_tracks(check_input_file(args.tracks, "tracks table"))
        if args.only_split:
            tracks = tracks[split_rows(tracks, args.only_split, "--only-split", args.tracks)].reset_index(drop=True)
        return tracks, pd.DataFrame(columns=SKIP_COLUMNS)
    if not Path(args.audio_dir).is_dir():
        raise UsageError(f"audio folder not found: {args.audio_dir}")
    scan = scan_audio(args.audio_dir, progress=not args.quiet, decode=False)  # each file is decoded once, below
    return scan.tracks, scan.skipped


def _check_options(args: argparse.Namespace) -> None:
    """Mistakes in the command line, found before any model is loaded or audio read."""
    if bool(args.audio_dir) == bool(args.tracks):
        raise UsageError("give either AUDIO_DIR or --tracks FILE (not both)")
    if args.only_split and not args.tracks:
        raise UsageError("--only-split needs --tracks (a scanned folder has no split column)")
    check_table_suffix(args.out, "--out")


def _outputs(args: argparse.Namespace, shard: Shard) -> dict[str, Path]:
    """Every file the command will write (name -> this process's path), checked before any audio is read."""
    out = Path(args.out)
    names = [*(f"{m}x" for m in CROP_MULTIPLES), "full"] if args.crops is not None else []
    files = {"tracks": out, **{n: out.with_name(f"{out.stem}.{n}{out.suffix}") for n in names}}
    if args.skipped:
        files["skipped"] = Path(args.skipped)
    return {name: check_output(part_path(f, *shard)) for name, f in files.items()}


def _settings(args: argparse.Namespace) -> EmbedSettings:
    return EmbedSettings(mode=args.mode, window_seconds=args.window_seconds, max_seconds=args.max_seconds,
                         crops=args.crops, crop_split=args.crop_split, seed=args.seed, params=args.params,
                         overrides=tuple(args.set), workers=args.workers, device=args.device, cache=args.cache,
                         use_cache=not args.no_cache, progress=not args.quiet)


def _cmd_embed(args: argparse.Namespace) -> int:
    _check_options(args)
    shard = Shard.from_env()
    files = _outputs(args, shard)
    settings = _settings(args)
    model = open_model(args.model, settings)
    tracks, scan_skipped = _read_tracks(args)
    res = embed_library(model, tracks, settings, shard)
    res.write(files["tracks"])
    if res.crops is not None:
        for name, X in res.crops.X.items():
            Embedded(res.crops.tracks, X, res.skipped).write(files[name])
    _report(files, res, scan_skipped if shard.rank == 0 else scan_skipped.iloc[:0])
    return 0


def _report(files: dict[str, Path], res: Embedded, scan_skipped: pd.DataFrame) -> None:
    """The skip report and the one-line summary; an error when this process had tracks and embedded none (then
    each of them is in `res.skipped` once)."""
    skipped = pd.concat([scan_skipped, res.skipped], ignore_index=True) if len(scan_skipped) else res.skipped
    if "skipped" in files:
        skipped.to_csv(files["skipped"], index=False)
    written = ", ".join(str(f) for name, f in files.items() if name != "skipped")
    print(f"{len(res.tracks)} tracks embedded ({res.tracks['seconds'].sum() / 3600:.2f} h) -> {written}; "
          f"{len(skipped)} skipped" + (f" (see {files['skipped']})" if "skipped" in files else ""))
    for r in skipped.head(10).itertuples():
        print(f"  skipped {r.path}: {r.reason}", file=sys.stderr)
    if len(res.skipped) and not len(res.tracks):
        raise CmlError(f"none of the {len(res.skipped)} tracks could be embedded; reasons above"
                       + (f" and in {files['skipped']}" if "skipped" in files else ""))


def register_cli(subparsers) -> None:
    """Add `cml embed MODEL (AUDIO_DIR | --tracks tracks.csv) --out FILE`."""
    p = subparsers.add_parser("embed", description=tracks_doc.split("\n\n")[0])
    p.add_argument("model", help="pretrained (the encoder shipped with cml: no training), a checkpoint path, "
                                 "untrained:VARIANT for the random-init baseline, or musicnn[:MODEL[:LAYER]] for "
                                 "the pretrained tagger (e.g. musicnn:MTT_vgg:pool5)")
    p.add_argument("audio_dir", nargs="?", help="folder of audio, recursive; label = first sub-folder")
    p.add_argument("--tracks", help="track table (CSV with id, path, [label, split]) instead of AUDIO_DIR")
    p.add_argument("--out", required=True, help="feature table to write (.parquet, or .csv)")
    p.add_argument("--skipped", help="CSV of skipped files/tracks (id, path, reason)")
    p.add_argument("--mode", choices=MODES, default="chunked",
                   help="chunked: the mean of overlapping windows (a track within one window: one pass); full: one pass")
    p.add_argument("--window-seconds", type=positive, help=f"window of --mode chunked (default {WINDOW_CROPS}x the "
                                                          f"training crop; {WINDOW_CROPS * DEFAULT_CROP_SECONDS:g} s untrained)")
    p.add_argument("--max-seconds", type=positive, help="embed at most the first S seconds of each track")
    p.add_argument("--crops", type=positive, nargs="?", const=TRAINING_CROP, metavar="CROP_SECONDS",
                   help="length extrapolation: also write OUT.{1x,2x,...,64x,full}.parquet from centred crops "
                        "of 1, 2, 4, ..., 64 x CROP_SECONDS (default: the checkpoint's training crop) and the full "
                        "track, from the same decoded audio")
    p.add_argument("--crop-split", metavar="SPLIT", help="with --crops: crop only the tracks of this split (e.g. test)")
    p.add_argument("--only-split", help="with --tracks: embed only the tracks of this split (e.g. test)")
    p.add_argument("--workers", type=non_negative_int, default=DEFAULT_WORKERS,
                   help=f"processes that decode audio while the encoder runs, on the cores the encoder leaves "
                        f"(0: none; default {DEFAULT_WORKERS}, the CPU cores up to 8)")
    p.add_argument("--seed", type=int, default=0, help="weights of untrained:VARIANT (and its norm sample)")
    p.add_argument("--params", help="untrained:VARIANT: take the model size and the front end from this file's "
                                   "model and frontend sections; musicnn: the model and layer from its musicnn section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="untrained:VARIANT: override an EncoderConfig field (repeatable), e.g. --set dim=64")
    p.add_argument("--cache", metavar="DIR", help="embedding cache: unchanged files are not decoded again "
                                                  "(default $CML_EMBED_CACHE or ~/.cache/cml/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="embed every file, read and write no cache")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_embed)
