"""The per-input gate: labels (cheapest option that agrees with the full model), the pick
rule, the comparison with fixed options, and ``splitcomp train gate`` end to end."""

from __future__ import annotations

import json

import torch

from splitcomp.train.gate import OptionScores, choose, exit_signals, gate_result, train_gate

from .tiny import image_folder


def _scores() -> OptionScores:
    # 4 images, 3 options costing 10, 100, 1000 bytes
    preds = torch.tensor([[1, 1, 1], [0, 2, 2], [0, 0, 3], [5, 5, 5]])
    sizes = torch.tensor([[10, 100, 1000]] * 4)
    teacher = torch.tensor([1, 2, 3, 4])
    return OptionScores(preds, sizes, teacher, teacher.clone(), torch.zeros(4, 2, 4, 4),
                        torch.zeros(4, 0))


def test_gate_targets_say_which_options_agree() -> None:
    s = _scores()
    assert s.agree().tolist() == [[True, True, True], [False, True, True],
                                  [False, False, True], [False, False, False]]


def test_gate_result_against_the_best_fixed_option() -> None:
    s = _scores()
    r = gate_result(s, torch.tensor([0, 1, 2, 0]), 0.5)
    assert r.top1 == 75.0 and r.bytes_per_sample == (10 + 100 + 1000 + 10) / 4
    assert (r.best_fixed, r.best_fixed_top1, r.best_fixed_bytes) == (2, 75.0, 1000.0)
    assert r.saving == 1 - 280 / 1000 and r.share == [0.5, 0.25, 0.25]


def test_choose_the_cheapest_option_predicted_to_agree() -> None:
    class Fixed(torch.nn.Module):  # agreement 0.5, 0.8, 0.3 for options 0, 1, 2
        def forward(self, f: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
            return torch.logit(torch.tensor([[0.5, 0.8, 0.3]])).expand(len(f), 3)

    f, sig = torch.zeros(2, 2, 4, 4), torch.zeros(2, 0)
    assert choose(Fixed(), f, sig, torch.tensor([0, 1, 2]), 0.4).tolist() == [0, 0]
    assert choose(Fixed(), f, sig, torch.tensor([0, 1, 2]), 0.7).tolist() == [1, 1]
    assert choose(Fixed(), f, sig, torch.tensor([0, 1, 2]), 0.9).tolist() == [2, 2]
    assert choose(Fixed(), f, sig, torch.tensor([2, 0, 1]), 0.2).tolist() == [2, 2]


def test_train_gate_fits_separable_targets_from_features_or_signals() -> None:
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    agree = torch.stack([labels == 1, torch.ones(64, dtype=torch.bool)], 1)
    f = torch.randn(64, 4, 8, 8) + 2.0 * (2 * labels - 1).float()[:, None, None, None]
    gate, losses = train_gate(f, torch.zeros(64, 0), agree, epochs=30, batch_size=16)
    assert losses[-1] < 0.5 * losses[0]
    # the same targets from an exit's confidence alone (features are noise)
    sig = exit_signals(torch.stack([4.0 * labels.float(), torch.zeros(64)], 1))
    gate, losses = train_gate(torch.randn(64, 4, 8, 8), sig, agree, epochs=80, batch_size=16)
    assert losses[-1] < 0.5 * losses[0]
    assert gate.mix is not None


def test_exit_signals_and_a_saved_gate_with_its_exit(tmp_path) -> None:
    from splitcomp.train import SplitRecord
    from splitcomp.train.exits import ExitHead
    from splitcomp.train.gate import EdgeGate, GateNet, load_gate, save_gate

    sig = exit_signals(torch.tensor([[10.0, 0.0], [0.0, 0.0]]))
    assert sig[0, 0] > 9 and abs(float(sig[1, 0])) < 1e-6  # log-odds of p = 1/2 is 0
    assert sig[0, 1] > sig[1, 1]  # sharper = higher negative entropy
    torch.manual_seed(1)
    ex = ExitHead(4, 10).eval()
    edge = EdgeGate(GateNet(4, 3, 2).eval(), [ex], [2, 0, 1], 0.7, ["a", "b", "c"])
    back, meta = load_gate(save_gate(tmp_path / "g", edge, "resnet20", None, "layer2",
                                     SplitRecord(0, 4, 0, "", [])))
    f = torch.randn(5, 4, 8, 8)
    assert torch.equal(back(f), edge(f)) and meta["options"] == ["a", "b", "c"]


def test_train_gate_command_end_to_end(tmp_path) -> None:
    from splitcomp.cli import main

    data = image_folder(tmp_path / "data", classes=4, per_class=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["train", "gate", "--model", "resnet20", "--weights", "random", "--data",
                   str(data), "--split", "layer2", "--option", "slicer:quality=0.1",
                   "--option", "int8", "--epochs", "2", "--n-train", "16", "--n-calib", "4",
                   "--no-progress", "--out", str(tmp_path / "g"), "--json",
                   str(tmp_path / "r.json")])
        assert main(["train", "gate", "--model", "resnet20", "--data", str(data), "--split",
                     "layer2", "--option", "int8", "--out", str(tmp_path / "x")]) == 2
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    for key in ("top1", "bytes_per_sample", "best_fixed_setting", "best_fixed_top1",
                "best_fixed_bytes_per_sample", "gate_params"):
        assert key in r, key
    assert [o["option"] for o in r["options"]] == ["slicer:quality=0.1", "int8"]
    assert abs(sum(o["share"] for o in r["options"]) - 1) < 1e-9
    assert (tmp_path / "g" / "checkpoint.json").exists()


def test_calibration_keeps_the_gate_within_its_drop() -> None:
    """A gate that sends everything to the cheap, poor option is not a saving."""
    from splitcomp.train.gate import calibrate_tau

    n = 100
    teacher = torch.arange(n) % 10
    cheap = torch.where(torch.arange(n) < 50, teacher, (teacher + 1) % 10)  # half right
    preds = torch.stack([cheap, teacher], 1)
    sizes = torch.tensor([[0, 100]] * n)

    class Always(torch.nn.Module):  # tau decides: up to 0.9 the cheap option, else the dear
        def forward(self, f: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
            return torch.logit(torch.tensor([[0.9, 1.0 - 1e-6]])).expand(len(f), 2)

    s = OptionScores(preds, sizes, teacher, teacher.clone(), torch.zeros(n, 2, 4, 4),
                     torch.zeros(n, 0))
    r = calibrate_tau(Always(), s, max_drop_pp=1.0)
    assert r.top1 == 100.0 and r.bytes_per_sample == 100.0


def test_a_gate_learns_on_the_images_its_options_reserved(tmp_path) -> None:
    """An exit trained with --reserve 8 keeps 8 train-part images out; a gate over it trains
    and calibrates on exactly those; options without a reserve give a warning instead."""
    from splitcomp.cli import main

    data = image_folder(tmp_path / "data", classes=4, per_class=8)
    common = ["--model", "resnet20", "--weights", "random", "--data", str(data), "--split",
              "layer2", "--n-train", "16", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for reserve, name in ((8, "e8"), (0, "e0")):
            assert main(["train", "exit", *common, "--target-drop", "50", "--epochs", "1",
                         "--n-calib", "4", "--reserve", str(reserve), "--out",
                         str(tmp_path / name)]) == 0
        rc = [main(["train", "gate", *common, "--option", f"exit={tmp_path / name}",
                    "--option", "int8", "--epochs", "1", "--n-calib", "4", "--out",
                    str(tmp_path / f"g{name}"), "--json", str(tmp_path / f"{name}.json")])
              for name in ("e8", "e0")]
    finally:
        torch.set_num_threads(threads)
    assert rc == [0, 0]
    split = json.loads((tmp_path / "e8" / "split.json").read_text())
    assert split["reserved"] == 8 and split["n_train"] == 16
    r8 = json.loads((tmp_path / "e8.json").read_text())
    assert (r8["n_train"], r8["n_calib"]) == (4, 4)  # the 8 reserved images only
    assert r8["gate_images"].startswith("the 8 train-part images")
    r0 = json.loads((tmp_path / "e0.json").read_text())
    assert (r0["n_train"], r0["n_calib"]) == (12, 4) and "optimistic" in r0["gate_images"]
