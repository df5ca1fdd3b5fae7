"""docs/architecture.md's toy strategy and domain, copied out of the page and run end to end.

The page claims that a strategy is one Python file plus one YAML and a domain one YAML; this test
puts exactly those files in place (a copy of conf/, the module registered under its documented
name) and runs them through the pipeline.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import ROOT, mlflow_runs, tiny_cfg

DOC = ROOT / "docs" / "architecture.md"


def doc_files() -> dict[str, str]:
    """``<!-- file: path -->`` followed by a fenced block: {path: content}."""
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- file: (\S+) -->\s*```\w*\n(.*?)```", text, re.S)}


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    files = doc_files()
    assert set(files) == {"tlexp/strategies/shrink_perturb.py", "conf/strategy/shrink_perturb.yaml",
                          "conf/domain/music.yaml"}
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    for path, content in files.items():
        if path.startswith("conf/"):
            (tmp_path / path).write_text(content)
    module_file = tmp_path / "shrink_perturb.py"
    module_file.write_text(files["tlexp/strategies/shrink_perturb.py"])
    name = "tlexp.strategies.shrink_perturb"
    spec = importlib.util.spec_from_file_location(name, module_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    monkeypatch.setenv("TLEXP_CONFIG_DIR", str(conf))
    return files


def test_the_documented_strategy_and_domain_run(toy, outputs: Path):
    from tlexp.pipeline import run_pipeline

    common = ["source=ecommerce", "target=music", "trainer.max_epochs=2", "pretrain.max_epochs=2"]
    plain = run_pipeline(tiny_cfg(outputs, *common, "strategy=shrink_perturb", "strategy.shrink=1.0",
                                  "strategy.noise=0.0", run_dir="a"))
    finetune = run_pipeline(tiny_cfg(outputs, *common, "strategy=finetune", run_dir="b"))
    shrunk = run_pipeline(tiny_cfg(outputs, *common, "strategy=shrink_perturb", run_dir="c"))
    df = mlflow_runs(plain["tracking_uri"]).set_index("run_id")
    run = df.loc[shrunk["run_id"]]
    assert run["status"] == "FINISHED" and run["tags.target"] == "music" and run["tags.strategy"] == "shrink_perturb"
    assert run["params.strategy.shrink"] == "0.5" and "user_emb.weight" in run["params.transfer.moved"]
    tests = [k for k in plain["metrics"] if k.startswith("test")]
    # shrink 1, no noise is exactly finetune's start: the same numbers, metric for metric
    assert tests and all(plain["metrics"][k] == finetune["metrics"][k] for k in tests)
    assert shrunk["metrics"]["test/ndcg_at_10"] != finetune["metrics"]["test/ndcg_at_10"]


def test_a_wrong_setting_of_the_documented_strategy_is_one_clear_error(toy, outputs: Path):
    from tlexp.core.errors import ConfigError
    from tlexp.pipeline import run_pipeline

    with pytest.raises(ConfigError, match=r"strategy\.shrink must be a number"):
        run_pipeline(tiny_cfg(outputs, "strategy=shrink_perturb", "strategy.shrink=lots"))
