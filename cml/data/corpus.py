"""The embedded default corpus: real compositions from music21's bundled corpus, rendered with FluidSynth.

Why: the pipeline needs labelled music audio that ships with the code and needs no network. music21
bundles thousands of scores in clearly different styles (Bach chorales, Palestrina masses, Celtic
fiddle tunes, ...). Every part of every piece is played by a General MIDI program drawn from ONE pool
shared by all classes, so a model has to hear the style (harmony, rhythm, texture), not the timbre.

Per piece: music21 parse -> cut to the first ``max_seconds`` -> MIDI -> pretty_midi -> instrumentation
-> FluidSynth -> trim, fade, peak-normalise -> mono FLAC (PCM_16). A piece that fails anywhere is
skipped with a one-line reason in ``skipped.csv``; the build goes on. A SoundFont FluidSynth cannot load
stops the build before anything is rendered.

``corpus.source: soundtracks`` builds a different corpus in the same place, with the same files and stage:
real released recordings (`cml.data.soundtracks`). `build_corpus` dispatches on the source.

One module, over 400 lines: the corpus is one pipeline step (scores -> instruments -> FluidSynth), and its
parts are only ever used together.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import logging
import multiprocessing
import re
import shutil
import warnings
import zlib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from cml.data.soundtracks import MANIFEST_COLUMNS as SOUNDTRACK_COLUMNS
from cml.data.soundtracks import SOUNDTRACKS, build_soundtracks, check_labels
from cml.data.sources import resolve_audio_dir, slug
from cml.errors import CmlError, check_input_file, check_output, one_line
from cml.params import Study, build, load_config, parse_section

# music21 and pretty_midi are imported where they are used: music21 alone takes ~1 s to import,
# which `cml --help` and every other stage should not pay.

log = logging.getLogger(__name__)

FOLDER = "<folder>"  # composer rule: the corpus folder the score lives in ("haydn", "mozart", ...)
METADATA = "<metadata>"  # composer rule: the score's metadata, "anonymous" where it names nobody

# One row per rendering: `piece` names the score, `draw` its instrument draw (id = piece, or piece__draw<k>).
MANIFEST_COLUMNS = ["id", "piece", "draw", "path", "label", "composer", "title", "duration", "source", "programs"]
SKIPPED_COLUMNS = ["source", "reason"]
NOT_RENDERED = "not_rendered.txt"  # written instead of audio when the study runs on the user's own audio
PEAK = 0.9  # peak level after normalisation: headroom so PCM_16 never clips
FADE_SECONDS = 0.5  # fade-out at the end of every excerpt, so a cut mid-note does not click
SILENCE = 1e-3  # trailing samples below this (after normalisation) are trimmed
# Pathological files are skipped by size, not by a timeout: a timeout would make the corpus depend on
# machine load. The largest files we use (trecento MusicXML, up to 1.3 MB) parse in about a second;
# the slowest (beethoven's opus59 quartet movements) in 2-4 s.
MAX_FILE_BYTES = 4_000_000


@dataclass(frozen=True)
class StyleClass:
    """Where one class's pieces live in music21's corpus and whom to credit for them."""

    folders: tuple[str, ...]  # folders under music21's corpus root (an absolute path works too)
    patterns: tuple[str, ...]  # file-name globs, searched recursively in each folder
    composer: str  # a fixed name, FOLDER or METADATA
    tunes: bool = False  # ABC collections: every X: tune in a file is one piece
    exclude: tuple[str, ...] = ()  # file-name globs to leave out


CLASSES: dict[str, StyleClass] = {
    "bach_chorale": StyleClass(("bach",), ("bwv*.mxl",), "bach"),
    "palestrina": StyleClass(("palestrina",), ("*.krn",), "palestrina"),
    "monteverdi": StyleClass(("monteverdi",), ("*.mxl",), "monteverdi"),  # the .rntxt are analyses
    # single movements only: beethoven's whole-quartet files (opus132.mxl, ...) take 5-15 s to parse for
    # a 30 s excerpt; opus18no1's .krn duplicate its .mxl (same name, dropped); k545 is a piano sonata
    "classical_quartet": StyleClass(
        ("haydn", "mozart", "beethoven"), ("movement*.mxl", "movement*.krn"), FOLDER, exclude=("*exposition*",)
    ),
    "celtic_fiddle": StyleClass(("ryansMammoth", "oneills1850"), ("*.abc",), "traditional", tunes=True),
    "trecento": StyleClass(("trecento",), ("*.xml", "*.mxl"), METADATA),
    # test*.abc are music21's test excerpts of the other Essen collections
    "essen_folk": StyleClass(("essenFolksong",), ("*.abc",), "traditional", tunes=True, exclude=("test*",)),
}

PROGRAM_POOL = (  # General MIDI programs (0-based) shared by every class
    0,  # Acoustic Grand Piano
    6,  # Harpsichord
    19,  # Church Organ
    48,  # String Ensemble 1
    40,  # Violin
    41,  # Viola
    42,  # Cello
    73,  # Flute
    71,  # Clarinet
    68,  # Oboe
    70,  # Bassoon
    60,  # French Horn
    24,  # Acoustic Guitar (nylon)
    46,  # Orchestral Harp
    52,  # Choir Aahs
    11,  # Vibraphone
)
INSTRUMENTATIONS = ("shared_pool", "score")
SOURCES = ("music21", "soundtracks")
# The options of each source. With the other source they would do nothing, so a value other than the default
# is an error, as a misspelt key is (sample_rate and workers apply to both).
MUSIC21_ONLY = ("classes", "pieces_per_class", "max_seconds", "min_seconds", "soundfont", "instrumentation",
                "program_pool", "draws", "seed")
SOUNDTRACKS_ONLY = ("soundtracks",)


@dataclass
class CorpusConfig:
    """The ``corpus:`` section of params.yaml.

    ``source`` chooses the corpus: "music21" (the default) renders scores from music21's corpus (this
    module); "soundtracks" transcodes real released recordings, the game soundtracks Debian ships, one
    label per game (`cml.data.soundtracks`). Each source has its own options (MUSIC21_ONLY, SOUNDTRACKS_ONLY);
    setting one of the other source's to anything but its default is an error, since it would be ignored.
    ``sample_rate`` and ``workers`` apply to both.
    """

    source: str = "music21"  # "music21": rendered scores; "soundtracks": real recordings (cml.data.soundtracks)
    soundtracks: list[str] = field(default_factory=lambda: list(SOUNDTRACKS))  # labels (games), source soundtracks
    classes: list[str] = field(default_factory=lambda: list(CLASSES))  # names from CLASSES
    pieces_per_class: int = 30  # fewer where a class runs out of scores that render
    max_seconds: float = 30.0  # excerpt: the first max_seconds of each piece, faded out
    min_seconds: float = 5.0  # skip pieces whose rendered audio is shorter
    sample_rate: int = 16000  # Hz; FluidSynth renders at this rate directly; soundtracks are resampled to it
    soundfont: str | None = None  # .sf2 path; None = TimGM6mb.sf2, the GM font pretty_midi ships
    instrumentation: str = "shared_pool"  # "shared_pool": programs from program_pool; "score": the score's own
    program_pool: list[int] = field(default_factory=lambda: list(PROGRAM_POOL))
    draws: int = 2  # instrument draws per piece (positive pairs across timbre); draw k > 0 is <id>__draw<k>.flac
    seed: int = 0  # piece selection and instrument draws
    workers: int = 2  # processes; the output does not depend on it

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"corpus.source must be one of {SOURCES}, got {self.source!r}")
        check_labels(self.soundtracks)
        other = MUSIC21_ONLY if self.source == "soundtracks" else SOUNDTRACKS_ONLY
        changed = [f.name for f in fields(self) if f.name in other and getattr(self, f.name) != (
            f.default if f.default is not MISSING else f.default_factory())]
        if changed:
            owner = "music21" if other is MUSIC21_ONLY else "soundtracks"
            raise ValueError(f"corpus: {changed} apply only to source {owner}, not {self.source!r}: "
                             "remove them (they would be ignored)")
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown or not self.classes:
            raise ValueError(f"corpus.classes: unknown {unknown} (known: {sorted(CLASSES)})")
        if self.instrumentation not in INSTRUMENTATIONS:
            raise ValueError(f"corpus.instrumentation must be one of {INSTRUMENTATIONS}, got {self.instrumentation!r}")
        if not self.program_pool or any(not 0 <= p <= 127 for p in self.program_pool):
            raise ValueError(f"corpus.program_pool must be non-empty GM programs 0..127, got {self.program_pool}")
        if self.draws < 1 or (self.draws > 1 and self.instrumentation == "score"):
            raise ValueError("corpus.draws must be >= 1, and 1 with instrumentation 'score' (draws would be identical)")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"corpus: need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        if self.pieces_per_class < 1 or self.workers < 1 or self.sample_rate < 8000:
            raise ValueError("corpus: pieces_per_class and workers must be >= 1, sample_rate >= 8000")

    @classmethod
    def from_dict(cls, d: dict | None) -> CorpusConfig:
        """Build from the ``corpus:`` section of params.yaml; a misspelt key is an error, not a default."""
        return build(cls, d, "'corpus'")


@dataclass(frozen=True)
class Piece:
    """One score to render: a file, or one tune of an ABC collection."""

    id: str
    label: str
    path: Path
    source: str  # path relative to music21's corpus root, "#<X>" appended for one tune of a collection
    composer: str  # resolved name, or METADATA (resolved after parsing)
    tune: int | None = None


def corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def list_pieces(label: str) -> list[Piece]:
    """All candidate pieces of one class, in a stable (sorted) order."""
    spec = CLASSES[label]
    root = corpus_root()
    pieces = []
    for folder in spec.folders:
        base = root / folder
        files: dict[Path, Path] = {}  # path without suffix -> file; one score in two formats counts once
        for pattern in spec.patterns:  # earlier patterns win
            for path in sorted(base.rglob(pattern)):
                if not any(fnmatch.fnmatch(path.name, x) for x in spec.exclude):
                    files.setdefault(path.with_suffix(""), path)
        composer = folder if spec.composer == FOLDER else spec.composer
        for path in sorted(files.values()):
            rel = path.relative_to(base.parent).as_posix()
            stem = slug(rel.rsplit(".", 1)[0])
            if spec.tunes:
                pieces += [Piece(f"{stem}-x{n}", label, path, f"{rel}#{n}", composer, n) for n in _tune_numbers(path)]
            else:
                pieces.append(Piece(stem, label, path, rel, composer))
    ids = [p.id for p in pieces]
    if len(set(ids)) != len(ids):
        raise ValueError(f"class {label!r}: piece ids collide; narrow its patterns in CLASSES")
    return pieces


def _tune_numbers(path: Path) -> list[int]:
    """The X: reference numbers of an ABC file (duplicates counted once: music21 only reads the first)."""
    text = path.read_text(encoding="latin-1")
    return sorted({int(n) for n in re.findall(r"^X:\s*(\d+)", text, flags=re.MULTILINE)})


def select_pieces(label: str, seed: int) -> list[Piece]:
    """A seeded permutation of the class's pieces; the build takes from the front until it has enough."""
    pieces = list_pieces(label)
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    return [pieces[i] for i in rng.permutation(len(pieces))]


def draw_programs(pool: list[int], n_parts: int, seed: int, piece_id: str, draw: int = 0) -> list[int]:
    """GM programs for a piece's parts; seeded by the piece id, so adding pieces reshuffles nothing."""
    rng = np.random.default_rng([seed, zlib.crc32(piece_id.encode()), draw])
    return [int(p) for p in rng.choice(pool, size=n_parts)]


def default_soundfont() -> Path:
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def check_soundfont(path: str | Path) -> Path:
    """Refuse a SoundFont FluidSynth cannot play, before any rendering: pretty_midi ignores a failed load
    (``sfload`` returns -1) and renders without it, so a bad file would otherwise pass unnoticed."""
    import fluidsynth

    path = check_input_file(path, "soundfont")
    with open(path, "rb") as fh:
        head = fh.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise CmlError(f"soundfont {path} is not a SoundFont 2 file (no RIFF 'sfbk' header); give a .sf2 file")
    synth = fluidsynth.Synth()
    try:
        if synth.sfload(str(path)) == -1:
            raise CmlError(f"FluidSynth cannot load soundfont {path} (truncated or corrupt?); give a valid .sf2 file")
    finally:
        synth.delete()
    return path


class _Skip(Exception):
    """A piece that converts but should not be in the corpus (too short, silent)."""


def render_piece(piece: Piece, config: CorpusConfig, out_dir: Path) -> dict:
    """Render one piece (all its draws) to FLAC: {'rows': manifest rows}, or {'source', 'reason'} when skipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # music21 and pretty_midi warn a lot on odd but usable scores
            return _render(piece, config, out_dir)
    except Exception as e:  # noqa: BLE001 - one bad score must never stop the build
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, _Skip) else str(e)
        reason = re.sub(r"id\(\)=\d+|0x[0-9a-f]+", "<addr>", " ".join(reason.split()))  # same text every build
        return {"source": piece.source, "reason": reason[:300]}


def _render(piece: Piece, config: CorpusConfig, out_dir: Path) -> dict:
    pm, title, composer = _load(piece, config)
    soundfont = str(config.soundfont or default_soundfont())

    audios, program_lists = [], []
    for draw in range(config.draws):
        if config.instrumentation == "shared_pool":
            progs = draw_programs(config.program_pool, len(pm.instruments), config.seed, piece.id, draw)
            for inst, prog in zip(pm.instruments, progs):
                inst.program = prog
        program_lists.append([int(i.program) for i in pm.instruments])
        audio = pm.fluidsynth(fs=config.sample_rate, synthesizer=soundfont, normalize=False)
        audios.append(_finish(audio, config))

    label_dir = out_dir / "audio" / piece.label
    label_dir.mkdir(parents=True, exist_ok=True)
    paths = [label_dir / (piece.id + (f"__draw{k}" if k else "") + ".flac") for k in range(config.draws)]
    for path, audio in zip(paths, audios):
        sf.write(path, audio, config.sample_rate, format="FLAC", subtype="PCM_16")
    rows = [
        {
            "id": path.stem,
            "piece": piece.id,
            "draw": draw,
            "path": path.relative_to(out_dir).as_posix(),
            "label": piece.label,
            "composer": composer,
            "title": title,
            "duration": round(len(audio) / config.sample_rate, 3),
            "source": piece.source,
            "programs": ";".join(map(str, programs)),
        }
        for draw, (path, audio, programs) in enumerate(zip(paths, audios, program_lists))
    ]
    return {"rows": rows}


def _load(piece: Piece, config: CorpusConfig):
    """The piece's first max_seconds as pretty_midi, ready to render, with its title and composer."""
    score = _parse(piece)
    md = score.metadata
    title = one_line((md and (md.title or md.movementName)) or piece.path.stem)
    composer = piece.composer
    if composer == METADATA:
        composer = one_line((md and md.composer) or "")
        composer = "anonymous" if composer.lower() in ("", "anonymous", "anon.", "anon") else composer
    # cut in the score, with margin for the last notes: long movements translate fast and stay under
    # pretty_midi's 1e7-tick limit
    _truncate(score, _quarters_at(score, config.max_seconds + 2.0))
    _strip_repeats(score)
    pm = _to_pretty_midi(score)
    pm.instruments = [i for i in pm.instruments if i.notes]
    if config.instrumentation == "shared_pool":
        pm.instruments = [i for i in pm.instruments if not i.is_drum]  # drums off: no class gets a kit
    if not pm.instruments:
        raise _Skip("no notes after MIDI conversion")
    return pm, title, composer


def _parse(piece: Piece):
    """Parse from source every time (forceSource): music21's pickle cache lives in a shared temp dir
    and would make a build depend on what an earlier build left there."""
    from music21 import converter, stream

    size = piece.path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _Skip(f"file is {size} bytes > MAX_FILE_BYTES {MAX_FILE_BYTES}")
    kwargs = {"number": piece.tune} if piece.tune is not None else {}
    score = converter.parse(piece.path, forceSource=True, **kwargs)
    if isinstance(score, stream.Opus):  # a collection parsed whole: its first tune
        score = score.scores.first()
    if not isinstance(score, stream.Score) or not score.parts:
        raise _Skip(f"not a score with parts: {type(score).__name__}")
    return score


def _quarters_at(score, seconds: float) -> float:
    """Offset (in quarter notes) reached after `seconds` of playback, following the score's tempo marks
    (music21's default tempo where it has none, as its MIDI export does)."""
    elapsed = 0.0
    for start, end, mark in score.metronomeMarkBoundaries():
        spq = mark.secondsPerQuarter()
        if elapsed + (end - start) * spq >= seconds:
            return float(start + (seconds - elapsed) / spq)
        elapsed += (end - start) * spq
    return float(score.highestTime)


def _truncate(score, end_ql: float) -> None:
    """Remove every measure (or, in measure-less parts, note) that starts at or after `end_ql`."""
    from music21 import stream

    for part in score.parts:
        measures = list(part.getElementsByClass(stream.Measure))
        if measures:
            part.remove([m for m in measures if m.offset >= end_ql])
        else:
            for el in list(part.recurse().notesAndRests):
                if el.getOffsetInHierarchy(part) >= end_ql:
                    el.activeSite.remove(el)


def _strip_repeats(score) -> None:
    """Play the excerpt straight through, as written. music21's MIDI export expands repeats, which fails
    on a score cut mid-repeat ("badly formed repeats"); expanding before cutting costs minutes on a
    long movement, and an excerpt needs no repeats to show its style."""
    from music21 import bar, repeat, spanner

    for m in score.recurse().getElementsByClass("Measure"):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = bar.Barline("double")
    for el in list(score.recurse().getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket))):
        el.activeSite.remove(el)


def _to_pretty_midi(score):
    import pretty_midi
    from music21 import midi

    data = midi.translate.streamToMidiFile(score).writestr()
    return pretty_midi.PrettyMIDI(io.BytesIO(data))


def _finish(audio: np.ndarray, config: CorpusConfig) -> np.ndarray:
    """Excerpt, trim trailing silence, fade out, peak-normalise; raise _Skip for silent/short audio."""
    audio = np.asarray(audio, dtype=np.float64)[: int(config.max_seconds * config.sample_rate)]
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak < 1e-6:
        raise _Skip("silent render")
    audio = audio / peak
    audio = audio[: np.flatnonzero(np.abs(audio) > SILENCE)[-1] + 1]
    n = min(len(audio), int(FADE_SECONDS * config.sample_rate))
    audio[len(audio) - n :] *= np.linspace(1.0, 0.0, n)
    audio *= PEAK / np.abs(audio).max()  # after the fade, which may have lowered the peak
    seconds = len(audio) / config.sample_rate
    if seconds < config.min_seconds:
        raise _Skip(f"rendered audio {seconds:.1f} s < min_seconds {config.min_seconds}")
    return audio.astype(np.float32)


def _render_task(task: tuple[Piece, CorpusConfig, Path]) -> dict:
    return render_piece(*task)


def build_corpus(config: CorpusConfig, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Render the configured classes into `out_dir`; write manifest.csv and skipped.csv; return the manifest.

    Each class takes pieces from the front of its seeded permutation; a skipped piece is replaced by
    the next candidate in a later round. Every piece renders independently of the others, so the
    files do not depend on `workers`. With ``source: soundtracks`` the soundtracks are built instead
    (`cml.data.soundtracks.build_soundtracks`: its own manifest columns, no piece/draw).
    """
    if config.source == "soundtracks":
        manifest = build_soundtracks(config.soundtracks, out_dir, config.sample_rate, config.workers, progress)
        _warn_stale(Path(out_dir), manifest)
        return manifest
    check_soundfont(config.soundfont or default_soundfont())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    queues = {label: select_pieces(label, config.seed) for label in config.classes}
    for label, queue in queues.items():
        log.info("%s: %d candidate pieces", label, len(queue))
    needed = {label: config.pieces_per_class for label in queues}
    rows, skipped = [], []
    bar = tqdm(total=sum(min(config.pieces_per_class, len(q)) for q in queues.values()), desc="corpus", unit="piece", disable=not progress)
    pool = multiprocessing.get_context("spawn").Pool(config.workers) if config.workers > 1 else None
    try:
        while True:
            batch = []
            for label, queue in queues.items():
                batch += queue[: needed[label]]
                del queue[: needed[label]]
            if not batch:
                break
            tasks = [(piece, config, out_dir) for piece in batch]
            results = pool.imap(_render_task, tasks) if pool else map(_render_task, tasks)
            for piece, result in zip(batch, results):
                if "reason" in result:
                    log.info("skip %s: %s", result["source"], result["reason"])
                    skipped.append(result)
                    bar.total += 1 if queues[piece.label] else 0
                else:
                    rows.extend(result["rows"])
                    needed[piece.label] -= 1
                bar.update()
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()

    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).sort_values(["label", "id"], ignore_index=True)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).to_csv(out_dir / "skipped.csv", index=False)
    for label, missing in needed.items():
        if missing:
            log.warning("%s: only %d pieces (ran out of candidates)", label, config.pieces_per_class - missing)
    _warn_stale(out_dir, manifest)
    log.info("corpus: %d pieces, %d skipped, %.0f s of audio in %s", len(manifest), len(skipped), manifest["duration"].sum(), out_dir)
    return manifest


def _warn_stale(out_dir: Path, manifest: pd.DataFrame) -> None:
    """Files from an earlier build with other params are not deleted (we never delete user data), but said."""
    listed = set(manifest["path"])
    stale = [p for p in (out_dir / "audio").rglob("*.flac") if p.relative_to(out_dir).as_posix() not in listed]
    if stale:
        log.warning("%d FLAC files under %s are not in this manifest (left from an earlier build)", len(stale), out_dir / "audio")


def _cmd_corpus(args: argparse.Namespace) -> int:
    config = parse_section(args.params, "corpus", CorpusConfig.from_dict)  # a UsageError names the mistake
    study = load_config(args.params, "study", Study)
    out = check_output(args.out, folder=True)
    source, audio_dir = resolve_audio_dir(study.audio, out, Path(args.data))
    if source == "data":
        write_not_rendered(out, f"study.audio is {study.audio!r} and {audio_dir} holds audio: the pipeline runs on it",
                           SOUNDTRACK_COLUMNS if config.source == "soundtracks" else MANIFEST_COLUMNS)
        return 0
    (out / NOT_RENDERED).unlink(missing_ok=True)
    manifest = build_corpus(config, out)
    print(manifest.groupby("label").size().to_string())
    return 0


def write_not_rendered(out_dir: Path, reason: str, columns: list[str] = MANIFEST_COLUMNS) -> None:
    """An empty corpus (manifest and skip report with their headers) and the reason it was not rendered."""
    shutil.rmtree(out_dir / "audio", ignore_errors=True)
    pd.DataFrame(columns=columns).to_csv(out_dir / "manifest.csv", index=False)
    pd.DataFrame(columns=SKIPPED_COLUMNS).to_csv(out_dir / "skipped.csv", index=False)
    (out_dir / NOT_RENDERED).write_text(reason + "\n")
    log.info("corpus not rendered: %s", reason)


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("corpus")
    p.add_argument("--params", default="params.yaml", help="YAML file with a 'corpus' section")
    p.add_argument("--data", default="data", help="user data folder: no corpus is rendered when the study runs on "
                                                   "its audio (study.audio)")
    p.add_argument("--out", default="outputs/corpus", help="output directory")
    p.set_defaults(func=_cmd_corpus)
