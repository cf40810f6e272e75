"""scripts/plot_metrics.py: every validation metric a run logs gets a panel, bookkeeping and
baselines do not; several folders make one figure."""
import importlib.util
import json

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("plot_metrics", ROOT / "scripts" / "plot_metrics.py")
plot_metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_metrics)


def _run(folder, val_keys):
    folder.mkdir(parents=True)
    events = [{"event": "train", "step": s, "loss": 3.0 / s, "lr": 1e-3} for s in range(1, 5)]
    events += [{"event": "val", "step": s, **{k: 0.5 / s for k in val_keys}} for s in (2, 4)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def test_every_validation_metric_but_loss_bookkeeping_and_baselines_is_drawn():
    val = [{"event": "val", "step": 2, "val_loss": 1.0, "val_cer": 0.3, "val_tokens": 900, "i2t_r1": 0.5,
            "chance_r1": 0.1, "hist_i2t_r1": 0.2, "val_ok": True, "val_nan": float("nan")},
           {"event": "val", "step": 4, "val_wer": 0.6}]
    assert plot_metrics.metric_keys(val) == ["val_cer", "i2t_r1", "val_wer"]


def test_one_figure_for_several_runs(tmp_path):
    a = _run(tmp_path / "thinker", ["val_loss", "val_ppl"])
    b = _run(tmp_path / "vision", ["i2t_r1", "t2i_r1", "chance_r1"])
    out = tmp_path / "curves.png"
    assert plot_metrics.main(["--ckpt", str(a), "--ckpt", str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_metrics.main(["--ckpt", str(a)]) == 0 and (a / "curves.png").is_file()
