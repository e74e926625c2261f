import json
import math
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

from cml.errors import UsageError
from cml.evaluation.probes import lead_program, majority_rate, style_timbre_probe
from cml.notebook import audio_excerpt, find_repo_root, listen, save_figure, write_metrics
from cml.params import load_params
from cml.search.neighbours import exact_knn_accuracy

matplotlib.use("Agg")


def test_write_metrics_is_stable_and_json_safe(tmp_path):
    path = tmp_path / "m" / "metrics.json"
    written = write_metrics(path, {"b": np.float32(0.1234567891), "a": 3, "nan": math.nan, "n": np.int64(2)})
    assert written == {"a": 3, "b": 0.123457, "n": 2, "nan": None}
    first = path.read_bytes()
    assert list(json.loads(first)) == ["a", "b", "n", "nan"]
    write_metrics(path, {"nan": math.nan, "n": 2, "b": 0.1234567891, "a": 3})
    assert path.read_bytes() == first


def test_saved_figures_are_byte_identical(tmp_path):
    import matplotlib.pyplot as plt

    def draw(path):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2])
        save_figure(fig, path)
        plt.close(fig)
        return path.read_bytes()

    assert draw(tmp_path / "a.png") == draw(tmp_path / "b.png")


def test_find_repo_root_walks_up(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "notebooks").mkdir()
    assert find_repo_root(tmp_path / "notebooks") == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="dvc.yaml"):
        find_repo_root(tmp_path.parent)


def test_load_params_sections_and_errors(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("a:\n  x: 1\nb:\n")
    assert load_params(path, "a") == {"x": 1}
    assert load_params(path, "b") == {}
    with pytest.raises(UsageError, match="no 'c' section"):
        load_params(path, "c")
    with pytest.raises(UsageError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    path.write_text("a: [1\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_params(path, "a")
    path.write_text("a: 3\n")
    with pytest.raises(UsageError, match="must be a mapping"):
        load_params(path, "a")


def test_knn_accuracy_separable_and_chance():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal([5, 0], 0.1, (20, 2)), rng.normal([0, 5], 0.1, (20, 2))])
    y = np.array([0] * 20 + [1] * 20)
    idx = rng.permutation(40)
    train, test = idx[:30], idx[30:]
    assert exact_knn_accuracy(X[train], y[train], X[test], y[test], k=5) == 1.0
    # labels unrelated to the features score near chance, not perfectly
    y_random = rng.integers(0, 2, 40)
    assert exact_knn_accuracy(X[train], y_random[train], X[test], y_random[test], k=5) < 1.0
    assert math.isnan(exact_knn_accuracy(X[:0], y[:0], X, y))


def test_style_timbre_probe_tells_which_one_the_space_encodes():
    rng = np.random.default_rng(1)
    n = 60
    style = rng.integers(0, 3, n)
    timbre = rng.integers(0, 3, n)
    X = np.eye(3)[timbre] * 5 + rng.normal(0, 0.1, (n, 3))  # the space encodes timbre only
    split = np.where(np.arange(n) < 40, "train", "test")
    probe = style_timbre_probe(X, style, timbre, split, k=5)
    assert probe["knn_timbre_acc"] == 1.0
    assert probe["knn_label_acc"] < 0.7
    assert probe["label_chance"] == majority_rate(style[40:])
    assert "knn_timbre_acc" not in style_timbre_probe(X, style, None, split)


def test_lead_program_and_majority_rate():
    assert lead_program("40;41;42") == "40"
    assert lead_program(19) == "19"
    assert majority_rate(np.array(["a", "a", "b", "c"])) == 0.5
    assert math.isnan(majority_rate(np.array([])))


def _ramp_wav(path, seconds, rate):
    """A WAV whose every sample is different (a ramp), so an excerpt shows where it was cut."""
    import soundfile as sf

    ramp = np.linspace(-0.9, 0.9, round(seconds * rate), dtype=np.float32)
    sf.write(path, ramp, rate, subtype="FLOAT")
    return ramp


@pytest.mark.parametrize("rate", [16000, 22050])
def test_audio_excerpt_is_the_centred_part_at_the_files_rate(tmp_path, rate):
    ramp = _ramp_wav(tmp_path / "a.wav", 3.0, rate)
    wave, got_rate = audio_excerpt(tmp_path / "a.wav", 1.0)
    assert got_rate == rate and wave.shape == (rate,)
    np.testing.assert_array_equal(wave, ramp[rate: 2 * rate])  # seconds 1 to 2 of 3
    wave, _ = audio_excerpt(tmp_path / "a.wav", 1.0, offset=0.5)
    np.testing.assert_array_equal(wave, ramp[rate // 2: rate // 2 + rate])
    wave, _ = audio_excerpt(tmp_path / "a.wav", 5.0)  # longer than the track: all of it
    np.testing.assert_array_equal(wave, ramp)


def test_audio_excerpt_at_a_given_rate(tmp_path):
    _ramp_wav(tmp_path / "a.wav", 3.0, 22050)
    wave, rate = audio_excerpt(tmp_path / "a.wav", 1.5, sample_rate=16000)
    assert rate == 16000 and wave.shape == (24000,)
    assert abs(float(wave.mean())) < 0.01  # the centre of a ramp symmetric about 0


def test_listen_plays_the_excerpt(tmp_path):
    import io

    import soundfile as sf
    from IPython.display import Audio

    ramp = _ramp_wav(tmp_path / "a.wav", 3.0, 16000)
    player = listen(tmp_path / "a.wav", 2.0)
    assert isinstance(player, Audio)
    played, rate = sf.read(io.BytesIO(player.data))
    assert rate == 16000 and played.shape == (32000,)
    expected = ramp[8000:40000]
    np.testing.assert_allclose(played, expected / np.abs(expected).max(), atol=1e-4)  # Audio normalises


@pytest.mark.parametrize("path", ["missing.wav", None, math.nan])
def test_listen_without_a_file_says_so(tmp_path, path):
    path = tmp_path / path if isinstance(path, str) else path
    with pytest.raises(FileNotFoundError, match="no local audio file: .*"):
        listen(path, 1.0)


KERNEL = """
import sys, types, warnings
import IPython
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")  # how tqdm.auto spots a Jupyter kernel
if sys.argv[2] == "without":
    sys.modules["ipywidgets"] = None  # not installed
warnings.simplefilter("always")
from cml.data.scan import scan_audio
from cml.progress import tqdm
from tqdm.notebook import tqdm_notebook
scan_audio(sys.argv[1], progress=True)
print(issubclass(tqdm, tqdm_notebook))
"""


@pytest.mark.parametrize("widgets", ["with", "without"])
def test_progress_bars_in_a_kernel_warn_of_nothing_and_use_widgets_where_they_can(tmp_path, widgets):
    """A notebook kernel without ipywidgets shows text bars, not tqdm.auto's red "IProgress not found"
    warning; with ipywidgets, the widget bar."""
    _ramp_wav(tmp_path / "a.wav", 2.0, 16000)  # a track to scan: the bar runs
    run = subprocess.run([sys.executable, "-c", KERNEL, str(tmp_path), widgets], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr and "IProgress" not in run.stderr, run.stderr
    assert run.stdout.split()[-1] == str(widgets == "with")  # before it: the bar, as IPython shows it outside a kernel
