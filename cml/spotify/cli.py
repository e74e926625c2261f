"""`cml spotify pull | push | link`: thin commands over cml.spotify.sync."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cml.errors import check_output, count, positive
from cml.spotify.auth import TOKEN_CACHE, TokenCache, load_credentials
from cml.spotify.client import SpotifyClient
from cml.spotify.features import AUDIO_FEATURE_COLUMNS, UNKNOWN_GENRE
from cml.spotify.http import SpotifyError
from cml.spotify.sync import link_local_files, pull, push_tracks, read_playlist_file, write_tracks_csv


def _client(args: argparse.Namespace, user: bool) -> SpotifyClient:
    """The client; a login that no one could answer (no cached token, no terminal) fails at once."""
    if user and not args.no_browser and not sys.stdin.isatty() and TokenCache(args.token_cache).get_cached_token() is None:
        raise SpotifyError(f"this needs a Spotify login and standard input is not a terminal: run the command once "
                           f"in a terminal (with --no-browser on a remote machine) to keep the login in "
                           f"{args.token_cache}")
    return SpotifyClient(load_credentials(args.env_file), user=user, token_cache=args.token_cache,
                         open_browser=not args.no_browser, login_timeout=args.login_timeout)


def _cmd_pull(args: argparse.Namespace) -> int:
    check_output(args.out)
    source, value = ("playlist", args.playlist) if args.playlist else ("saved", None) if args.saved else \
        ("search", args.search) if args.search else ("tracks", args.tracks)
    user = args.auth == "user" if args.auth else source in ("playlist", "saved")
    if source == "tracks":
        value = read_playlist_file(value)[0]
    tracks = pull(_client(args, user), source, value, limit=args.limit, genre=args.genre,
                  features=not args.no_features, progress=True)
    write_tracks_csv(tracks, args.out)
    with_features = int(tracks[AUDIO_FEATURE_COLUMNS].notna().any(axis=1).sum())
    print(f"wrote {len(tracks)} track(s) to {args.out} ({with_features} with audio features)")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    refs, local = read_playlist_file(args.tracks_file)
    how = args.description or f"tracks from {Path(args.tracks_file).name}"
    result, links = push_tracks(_client(args, user=True), args.name, refs, local, how, replace=args.replace,
                                public=args.public, dry_run=args.dry_run, progress=True)
    if links:
        print(f"linked {sum(1 for link in links if link.uri)} of {len(links)} local file(s)")
    verb = "would" if args.dry_run else "did"
    print(f"{verb} {result.action} playlist {args.name!r} with {result.n_tracks} track(s):")
    for step in result.requests:
        print(f"  - {step}")
    print(f"  description: {result.description}")
    return 0


def _cmd_link(args: argparse.Namespace) -> int:
    check_output(args.out)
    links = link_local_files(_client(args, user=args.auth == "user"), args.files, progress=True)
    table = pd.DataFrame([{"path": str(link.path), "uri": link.uri, "matched_by": link.matched_by,
                           "reason": link.reason} for link in links])
    write_tracks_csv(table, args.out)
    print(f"linked {int(table['uri'].notna().sum())} of {len(table)} file(s); wrote {args.out}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("spotify")
    commands = parser.add_subparsers(dest="spotify_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", default=".env", help="gitignored file with SPOTIPY_* variables")
    common.add_argument("--token-cache", default=TOKEN_CACHE, help="user token cache (mode 0600, gitignored)")
    common.add_argument("--no-browser", action="store_true",
                        help="log in without opening a browser here: print the Spotify page, paste back the "
                             "address it sends you to (for remote machines)")
    common.add_argument("--login-timeout", type=positive, default=120.0, metavar="SECONDS",
                        help="how long the browser login waits for you to approve (default 120)")

    pull_p = commands.add_parser("pull", parents=[common], help="tracks -> CSV for the DataAnalysis notebook")
    what = pull_p.add_mutually_exclusive_group(required=True)
    what.add_argument("--playlist", help="playlist URL, URI or id")
    what.add_argument("--saved", action="store_true", help="your saved tracks (library)")
    what.add_argument("--search", help="search query, e.g. 'genre:jazz year:2020'")
    what.add_argument("--tracks", help="file with track URIs/URLs/ids (.txt, .m3u or .csv with a uri column)")
    pull_p.add_argument("--out", required=True, help="CSV to write, e.g. data/spotify/my_playlist.csv")
    pull_p.add_argument("--limit", type=count, help="at most this many tracks")
    pull_p.add_argument("--genre", default=UNKNOWN_GENRE, help="value for track_genre (Spotify gives tracks none)")
    pull_p.add_argument("--no-features", action="store_true", help="do not ask for audio features")
    pull_p.add_argument("--auth", choices=("user", "app"),
                        help="user (PKCE login) or app (client credentials); default: user for --playlist/--saved")
    pull_p.set_defaults(func=_cmd_pull)

    push_p = commands.add_parser("push", parents=[common], help="create or replace a playlist in your account")
    push_p.add_argument("tracks_file", help="track URIs (.txt/.m3u/.csv uri column) or local audio files (.m3u)")
    push_p.add_argument("--name", required=True, help="playlist name")
    push_p.add_argument("--description", help="how the playlist was generated (goes into its description)")
    push_p.add_argument("--replace", action="store_true", help="overwrite your playlist of the same name")
    push_p.add_argument("--public", action="store_true", help="make the playlist public (default private)")
    push_p.add_argument("--dry-run", action="store_true", help="print what would be done; write nothing")
    push_p.set_defaults(func=_cmd_push)

    link_p = commands.add_parser("link", parents=[common], help="find local audio files on Spotify by their tags")
    link_p.add_argument("files", nargs="+", help="audio files")
    link_p.add_argument("--out", required=True, help="CSV with path, uri, matched_by, reason")
    link_p.add_argument("--auth", choices=("user", "app"), default="app")
    link_p.set_defaults(func=_cmd_link)
