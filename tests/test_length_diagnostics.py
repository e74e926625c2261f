"""The embeddings of the last pipeline run in this workspace are not organised by track length.

Reads `outputs/evaluate/metrics.json` (the Compare notebook's `pc1_share` and `pc1_duration_rho` per space:
`cml.evaluation.scores.length_diagnostics`); skipped when the workspace holds no run (a fresh clone, CI). Run it after
`make repro` or `make soundtracks`: on the soundtracks, the one-pass `sincos` embedding had its top principal
direction on log duration (rho 0.84), the failure this guards against (README, "Real recordings").
"""
import json

import pytest

from tests.helpers import ROOT

METRICS = ROOT / "outputs" / "evaluate" / "metrics.json"


@pytest.mark.skipif(not METRICS.is_file(), reason="no pipeline run in this workspace (outputs/evaluate/metrics.json)")
def test_no_trained_space_of_the_last_run_is_organised_by_length():
    metrics = json.loads(METRICS.read_text())
    spaces = {name: m for name, m in metrics.items() if name.startswith("contrastive/") and "pc1_share" in m}
    if not spaces:
        pytest.skip("the run predates the length diagnostics")
    for name, m in spaces.items():
        assert m["pc1_share"] < 0.5, (name, m["pc1_share"])  # no single direction holds most of the variance
        assert abs(m["pc1_duration_rho"]) < 0.5, (name, m["pc1_duration_rho"])  # nor follows track length
