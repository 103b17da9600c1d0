"""``vitx.toml``: the bundled sample config, relative paths, and every kind of invalid entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitx_core.data.annotations import GTSpec
from vitx_core.data.cohort import PSEUDONYM_ENV, load_cohort_from_config
from vitx_core.data.config import ConfigError, VitxConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SAMPLE_TOML = REPO / "sample_data" / "vitx.toml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vitx.toml"
    p.write_text(text)
    return p


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    """A folder with one image, a labels CSV and a box CSV next to where the TOML goes."""
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((20, 30), 80, np.uint8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "labels.csv").write_text("image,nodule\na,1\n")
    (tmp_path / "boxes.csv").write_text("image,finding,x,y,w,h\na,nodule,1,2,3,4\n")
    return tmp_path


def test_sample_config_loads_and_points_at_the_sample_cohort(monkeypatch, tmp_path):
    monkeypatch.delenv(PSEUDONYM_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # paths are relative to the TOML file, not the working folder
    cfg = load_config(SAMPLE_TOML)
    assert isinstance(cfg, VitxConfig) and cfg.path == SAMPLE_TOML
    assert cfg.cohort.root == REPO / "sample_data" / "cohort" / "images"
    assert cfg.cohort.labels_csv == REPO / "sample_data" / "cohort" / "labels.csv"
    assert cfg.ground_truth == (GTSpec(REPO / "sample_data" / "cohort" / "gt_segmentations.json",
                                       format="chexlocalize"),)
    assert cfg.model.spec == "demo"
    assert cfg.explainers.options == {}  # the sample config uses every default
    assert "rollout" in cfg.explainers.methods_arg()
    assert cfg.output.save_overlays is True
    c = load_cohort_from_config(cfg)
    assert len(c.cases) == 48 and c.errors == []
    assert all(any(v == 1 for v in x.labels.values()) == bool(x.annotations) for x in c.cases)


def test_env_key_overrides_config_key(mini, monkeypatch):
    monkeypatch.delenv(PSEUDONYM_ENV, raising=False)
    p = _write(mini, '[cohort]\nroot = "imgs"\npseudonym_key = "from-file"\n')
    cfg = load_config(p)
    assert "from-file" not in repr(cfg)  # the key is a secret: not in the repr
    from_file = load_cohort_from_config(cfg).cases[0].case_id
    monkeypatch.setenv(PSEUDONYM_ENV, "from-env")
    from_env = load_cohort_from_config(cfg).cases[0].case_id
    assert from_file != from_env
    from vitx_core.data.cohort import pseudonymous_id

    assert from_env == pseudonymous_id("a.png", "from-env")
    assert from_file == pseudonymous_id("a.png", "from-file")


def test_all_problems_reported_at_once_with_allowed_keys(mini):
    p = _write(mini, """
[cohort]
root = "missing_folder"
max_images = "ten"
recursiv = false

[[ground_truth]]
path = "boxes.csv"
format = "yolo"

[model]
spec = "hf:no/such/dir"

[evaluation]
threshold_rule = "median"

[outputs]
dir = "x"
""")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: 7 problem(s)")
    assert "[cohort].root: path not found" in msg and "missing_folder" in msg
    assert "[cohort].max_images: expected an integer" in msg
    assert "unknown key 'recursiv'; allowed: root, labels_csv, recursive" in msg
    assert "format: expected one of auto, chexlocalize, csv, nih, masks, coco" in msg
    assert "model folder not found" in msg
    assert "threshold_rule: expected one of otsu, fixed, tuned, top_k" in msg
    assert "unknown section [outputs]" in msg


def test_required_and_type_errors(mini):
    with pytest.raises(ConfigError, match="missing section \\[cohort\\]"):
        load_config(_write(mini, '[model]\nspec = "demo"\n'))
    with pytest.raises(ConfigError, match="'root' is required"):
        load_config(_write(mini, "[cohort]\nrecursive = true\n"))
    with pytest.raises(ConfigError, match="recursive: expected true or false"):
        load_config(_write(mini, '[cohort]\nroot = "imgs"\nrecursive = "yes"\n'))
    with pytest.raises(ConfigError, match="labels_csv: not a file"):
        load_config(_write(mini, '[cohort]\nroot = "imgs"\nlabels_csv = "imgs"\n'))
    with pytest.raises(ConfigError, match="'path' is required"):
        load_config(_write(mini, '[cohort]\nroot = "imgs"\n[[ground_truth]]\nformat = "csv"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(mini, "[cohort\nroot = 1\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(mini / "nope.toml")
    with pytest.raises(ConfigError, match="tuned_thresholds_csv"):
        load_config(_write(mini, '[cohort]\nroot = "imgs"\n[evaluation]\nthreshold_rule = "tuned"\n'))
    with pytest.raises(ConfigError, match=r"thresholds: must lie in \[0.0, 1.0\]"):
        load_config(_write(mini, '[cohort]\nroot = "imgs"\n[evaluation]\nthresholds = [0.5, 1.5]\n'))


def test_explainer_names_and_options_validated(mini):
    base = '[cohort]\nroot = "imgs"\n'
    with pytest.raises(ConfigError, match=r"unknown explainer 'rolout'; known: .*rollout"):
        load_config(_write(mini, base + '[explainers]\nmethods = ["rolout"]\n'))
    with pytest.raises(ConfigError, match="unknown option 'discard'; allowed: head_fusion"):
        load_config(_write(mini, base + '[explainers]\nmethods = ["rollout"]\n'
                           "[explainers.options.rollout]\ndiscard = 0.9\n"))
    with pytest.raises(ConfigError, match="head_fusion: expected one of"):
        load_config(_write(mini, base + '[explainers]\nmethods = ["rollout"]\n'
                           '[explainers.options.rollout]\nhead_fusion = "median"\n'))
    with pytest.raises(ConfigError, match="'occlusion' is not in methods"):
        load_config(_write(mini, base + '[explainers]\nmethods = ["default"]\n'
                           '[explainers.options.occlusion]\nsign = "absolute"\n'))
    cfg = load_config(_write(mini, base + '[explainers]\nmethods = ["legrad", "rollout"]\n'
                             "[explainers.options.legrad]\nlayers = [-2, -1]\n"
                             '[explainers.options.rollout]\npreset = "vit-explain"\n'
                             "discard_ratio = 0\n"))
    assert cfg.explainers.options["legrad"] == {"layers": (-2, -1)}  # TOML arrays -> tuples
    assert type(cfg.explainers.options["rollout"]["discard_ratio"]) is float  # int -> float
    with pytest.raises(ConfigError, match=r"discard_ratio must be in \[0, 1\)"):  # Params check
        load_config(_write(mini, base + '[explainers]\nmethods = ["rollout"]\n'
                           "[explainers.options.rollout]\ndiscard_ratio = 1.5\n"))
    assert list(cfg.explainers.methods_arg()) == ["legrad", "rollout"]


def test_full_config_round_trip(mini):
    maps = mini / "maps" / "rollout"
    maps.mkdir(parents=True)
    np.save(maps / "a.npy", np.ones((2, 3), np.float32))
    p = _write(mini, """
[cohort]
root = "imgs"
labels_csv = "labels.csv"
recursive = false
max_images = 5
exclude = ["tmp*"]
findings = ["nodule"]
max_pixels = 1000000
verify = true

[[ground_truth]]
path = "boxes.csv"
format = "csv"
ref_size = [40, 60]

[[maps]]
path = "maps"

[model]
spec = "timm:vit_tiny_patch16_224"
labels = ["nodule", "effusion"]
multi_label = true
img_size = [64, 48]
device = "cpu"

[explainers]
methods = ["rollout"]
target = "nodule"
batch_size = 2

[evaluation]
threshold_rule = "fixed"
thresholds = [0.3, 0.5]
tolerance_px = 15

[output]
dir = "out"
save_overlays = false
alpha = 0.3
""")
    cfg = load_config(p)
    assert cfg.cohort.max_images == 5 and cfg.cohort.findings == ("nodule",)
    assert cfg.ground_truth[0].ref_size == (40, 60)
    assert cfg.model.img_size == (64, 48) and cfg.model.labels == ("nodule", "effusion")
    assert cfg.evaluation.thresholds == (0.3, 0.5) and cfg.evaluation.tolerance_px == 15.0
    assert cfg.output.dir == mini / "out" and cfg.output.save_overlays is False
    c = load_cohort_from_config(cfg)
    assert c.errors == [] and len(c.cases) == 1
    case = c.cases[0]
    expect = np.zeros((20, 30), bool)
    expect[1:3, 0:2] = True  # box (1, 2, 3, 4) on 40x60 -> (0.5, 1, 1.5, 2) on 20x30
    assert np.array_equal(case.mask("nodule"), expect)
    assert case.saliency("rollout").to_original().shape == (20, 30)
