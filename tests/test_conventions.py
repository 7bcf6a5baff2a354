"""Every framework's reward models and critics, read and written exactly (issue 23).

Checkpoints are saved the way each framework saves them (tests/frameworks.py, from their source), their reward
is computed the framework's way, and ``vhtool score`` on the original and on every conversion gives it (fp32,
1e-4); what ``convert --to`` writes loads strictly in the framework's loader (its faithful reimplementation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests import frameworks as F
from tests.helpers import tree_bytes
from vhtool.checkpoint.conventions import TABLE, detect_framework
from vhtool.checkpoint.convert import convert_checkpoint
from vhtool.checkpoint.convert.frameworks import linear_as_mlp, mlp_as_linear
from vhtool.cli.app import app
from vhtool.errors import InputError
from vhtool.models.scoring import ScoreOptions, Scorer
from vhtool.models.scoring.readout import Readout

TOL = 1e-4


def vhtool_scores(path: Path | str, ids: list[list[int]] | None = None, **options: Any) -> list[float]:
    scorer = Scorer(path, options=ScoreOptions(device="cpu", **options))
    assert scorer.readout is not None
    seqs = [scorer.readout.prepare(list(seq), limit=None) for seq in (F.IDS if ids is None else ids)]
    return [scorer.score_batch([s])[0][0] for s in seqs]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("frameworks")
    return {
        "openrlhf": F.save_openrlhf("tiny-llama", root / "openrlhf", normalize=True, mean=0.25, std=2.0),
        "openrlhf-legacy": F.save_openrlhf("tiny-gpt2", root / "openrlhf-legacy", legacy=True),
        "deepspeed-chat": F.save_deepspeed_chat("tiny-gpt2", root / "ds"),
        "deepspeed-chat-legacy": F.save_deepspeed_chat("tiny-gpt2", root / "ds-legacy", legacy=True, seed=1),
        "trlx": F.save_trlx("tiny-llama", root / "trlx"),
        "verl": F.save_verl("tiny-llama", root / "verl"),
    }


def framework_number(kind: str, path: Path, ids: list[int]) -> float:
    if kind.startswith("openrlhf"):
        return F.openrlhf_reward(path, ids)
    if kind.startswith("deepspeed-chat"):
        return F.deepspeed_chat_reward(path, ids)
    if kind == "trlx":
        return F.trlx_value(path, ids)
    return F.verl_value(path, ids)


@pytest.fixture(scope="module")
def expected(sources: dict[str, Path]) -> dict[str, list[float]]:
    return {k: [framework_number(k, p, ids) for ids in F.IDS] for k, p in sources.items()}


@pytest.mark.parametrize(
    "kind", ["openrlhf", "openrlhf-legacy", "deepspeed-chat", "deepspeed-chat-legacy", "trlx", "verl"]
)
def test_score_gives_the_frameworks_number(kind: str, sources: dict[str, Path], expected: dict[str, Any]) -> None:
    got = vhtool_scores(sources[kind], allow_pickle=True)
    assert got == pytest.approx(expected[kind], abs=TOL)


def test_detection_names_convention_readout_and_normalisation(sources: dict[str, Path]) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["inspect-layers", str(sources["openrlhf"]), "--json"])
    assert res.exit_code == 0, res.output
    notes = json.loads(res.stdout)["value_head"]["notes"]
    assert any("openrlhf reward" in n and "readout eos" in n and "(r - 0.25) / 2" in n for n in notes), notes
    res = runner.invoke(app, ["inspect-layers", str(sources["verl"]), "--json"])
    assert any("verl critic" in n for n in json.loads(res.stdout)["value_head"]["notes"])
    legacy = load_file(str(sources["openrlhf-legacy"] / "model.safetensors"))
    cfg = json.loads((sources["openrlhf-legacy"] / "config.json").read_text())
    det = detect_framework(set(legacy), cfg)
    assert det is not None and det.legacy == ("value_head.weight",)
    ds = torch.load(sources["deepspeed-chat-legacy"] / "pytorch_model.bin", weights_only=True)
    det = detect_framework(set(ds), None)
    assert det is not None and (det.convention.name, det.readout, det.legacy) == (
        "deepspeed-chat",
        "before-eos",
        ("rwtranrsformer.",),
    )


def test_no_normalize_and_readout_override(sources: dict[str, Path], expected: dict[str, Any]) -> None:
    raw = vhtool_scores(sources["openrlhf"], normalize=False)
    assert [r / 2.0 - 0.125 for r in raw] == pytest.approx(expected["openrlhf"], abs=TOL)
    last = vhtool_scores(sources["openrlhf"], readout="last")
    assert last != pytest.approx(expected["openrlhf"], abs=TOL)  # without the appended EOS: another token


TARGETS = ["openrlhf", "deepspeed-chat", "trlx", "seq-cls", "token-cls", "vhtool"]


@pytest.mark.parametrize("kind", ["openrlhf", "deepspeed-chat", "trlx-linear", "verl"])
def test_every_conversion_scores_the_sources_number(
    kind: str, sources: dict[str, Path], expected: dict[str, Any], tmp_path: Path
) -> None:
    if kind == "trlx-linear":  # a trlx head that is exactly linear converts everywhere
        w, b = torch.randn(1, 64), torch.tensor([0.5])
        src = F.save_trlx("tiny-llama", tmp_path / "trlx-src", head=linear_as_mlp(w, b))
        want = [F.trlx_value(src, ids) for ids in F.IDS]
    else:
        src, want = sources[kind], expected[kind]
    for to in TARGETS:
        out = tmp_path / to
        if to in ("trlx", "vhtool") and kind in ("openrlhf", "verl"):
            # Llama's embeddings are untied and these frameworks save no LM head: a causal target cannot be built
            with pytest.raises(InputError, match="LM head"):
                convert_checkpoint(src, out, to=to, allow_pickle=True)
            assert not out.exists()
            continue
        res = convert_checkpoint(src, out, to=to, allow_pickle=True, allow_lossy=True)
        assert res.target == to
        manifest = json.loads((out / "vhtool.json").read_text())
        source_rule = "last" if kind in ("trlx-linear", "verl") else TABLE[kind].readout
        assert manifest["conversion"]["readout"] == source_rule
        got = vhtool_scores(out, allow_pickle=True)
        if res.lost:  # --allow-lossy dropped the 0.5 bias a bias-less head cannot hold: the only loss allowed
            assert (kind, res.lost) == ("trlx-linear", ["head bias = 0.5"])
            got = [g + 0.5 for g in got]
        assert got == pytest.approx(want, abs=TOL), (kind, to)
        strict_load(to, out)


def strict_load(to: str, out: Path) -> None:
    """The target framework's loader reads every key (strict)."""
    if to == "deepspeed-chat":
        F.deepspeed_chat_load(out)
    elif to == "trlx":
        F.trlx_load(out)
    elif to == "openrlhf":
        cfg = json.loads((out / "config.json").read_text())
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(out)
        role = "reward" if cfg["architectures"] == ["RewardModel"] else "critic"
        _, info = F.openrlhf_class(config, role, cfg["value_head_prefix"]).from_pretrained(
            out, config=config, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_framework_numbers_agree_across_targets_with_the_same_rule(sources: dict[str, Path], tmp_path: Path) -> None:
    """DeepSpeed-Chat -> trlx -> DeepSpeed-Chat: each framework's own loader gives the same values."""
    trlx = tmp_path / "trlx"
    convert_checkpoint(sources["deepspeed-chat"], trlx, to="trlx", allow_pickle=True)
    back = tmp_path / "back"
    convert_checkpoint(trlx, back, to="deepspeed-chat", allow_pickle=True)
    a = torch.load(sources["deepspeed-chat"] / "pytorch_model.bin", weights_only=True)
    b = torch.load(back / "pytorch_model.bin", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # lossless, bit for bit
    for ids in F.IDS:
        assert F.deepspeed_chat_reward(back, ids) == pytest.approx(
            F.deepspeed_chat_reward(sources["deepspeed-chat"], ids)
        )


def test_openrlhf_round_trip_through_trlx_is_lossless(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["openrlhf-legacy"]  # GPT-2: tied embeddings, so trlx's LM head is the embedding's copy
    convert_checkpoint(src, tmp_path / "t", to="trlx")
    convert_checkpoint(tmp_path / "t", tmp_path / "o", to="openrlhf", allow_pickle=True, role="reward")
    a = load_file(str(src / "model.safetensors"))
    a = {k.replace("value_head.", "score."): v for k, v in a.items()}  # the legacy name is written as today's
    b = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mlp_linearity() -> None:
    w, b = torch.randn(1, 8), torch.randn(1)
    lin = mlp_as_linear(linear_as_mlp(w, b))
    assert lin is not None and torch.allclose(lin[0], w) and torch.allclose(lin[1], b)
    assert mlp_as_linear(dict(F.make_head(8, 1).state_dict())) is None


def test_readout_rules() -> None:
    r = Readout("before-eos", "test", eos_id=2)
    assert r.index([2, 5, 6, 2, 2]) == 2 and r.index([5, 6, 7]) == 2
    e = Readout("eos", "test", eos_id=2)
    assert e.prepare([5, 6], limit=None) == [5, 6, 2] and e.prepare([5, 6], limit=2) == [5, 2]


# ------------------------------------------------------------------------------------------------ refusals
def _refused(args: list[str], out: Path, src: Path, needle: str) -> None:
    before = tree_bytes(src)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not out.exists() and tree_bytes(src) == before


def test_refuses_non_linear_trlx_head(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    src = sources["trlx"]
    _refused(["convert", str(src), "--to", "openrlhf", "--allow-pickle", "-o", str(out)], out, src, "not a linear")


def test_refuses_pickle_without_allow_pickle(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    src = sources["deepspeed-chat"]
    _refused(["convert", str(src), "--to", "openrlhf", "-o", str(out)], out, src, "--allow-pickle")


def test_refuses_head_width_mismatch(sources: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    state = torch.load(sources["deepspeed-chat"] / "pytorch_model.bin", weights_only=True)
    state["v_head.weight"] = torch.zeros(1, 48)
    torch.save(state, src / "pytorch_model.bin")
    (src / "config.json").write_bytes((sources["deepspeed-chat"] / "config.json").read_bytes())
    out = tmp_path / "o"
    _refused(["convert", str(src), "--to", "openrlhf", "--allow-pickle", "-o", str(out)], out, src, "matches neither")


def test_refuses_contradicting_from(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    src = sources["verl"]
    _refused(["convert", str(src), "--from", "trlx", "--to", "openrlhf", "-o", str(out)], out, src, "--from trlx")


def test_trlx_summarisation_rm_needs_config_from(sources: dict[str, Path], tmp_path: Path) -> None:
    """trlx's GPTRewardModel: a bare state dict (transformer.* + v_head.weight), no config.json."""
    ds = torch.load(sources["deepspeed-chat"] / "pytorch_model.bin", weights_only=True)
    src = tmp_path / "rm"
    src.mkdir()
    torch.save({k.replace("rwtransformer.", "transformer."): v for k, v in ds.items()}, src / "pytorch_model.bin")
    out = tmp_path / "o"
    _refused(["convert", str(src), "--to", "openrlhf", "--allow-pickle", "-o", str(out)], out, src, "--config-from")
    res = CliRunner().invoke(
        app,
        [
            "convert",
            str(src),
            "--to",
            "seq-cls",
            "--allow-pickle",
            "--config-from",
            str(sources["deepspeed-chat"]),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    # the same weights as the DeepSpeed-Chat model, the same before-EOS readout: the same number
    (out / "tokenizer.json").write_bytes((sources["deepspeed-chat"] / "tokenizer.json").read_bytes())
    (out / "tokenizer_config.json").write_bytes((sources["deepspeed-chat"] / "tokenizer_config.json").read_bytes())
    want = [F.deepspeed_chat_reward(sources["deepspeed-chat"], ids) for ids in F.IDS]
    assert vhtool_scores(out) == pytest.approx(want, abs=TOL)


def test_score_cli_readout_and_pickle(sources: dict[str, Path], expected: dict[str, Any], tmp_path: Path) -> None:
    records = tmp_path / "in.jsonl"
    records.write_text("".join(json.dumps({"input_ids": ids}) + "\n" for ids in F.IDS))
    src = str(sources["deepspeed-chat"])
    res = CliRunner().invoke(app, ["score", src, "--input", str(records), "--device", "cpu"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["score", src, "--input", str(records), "--device", "cpu", "--allow-pickle"])
    assert res.exit_code == 0, res.output
    got = [json.loads(line)["score"] for line in res.stdout.splitlines() if line.startswith("{")]
    assert got == pytest.approx(expected["deepspeed-chat"], abs=TOL)


# ------------------------------------------------------------------------ OPT's projection (DeepSpeed-Chat)
#: OPT's tokenizer starts every text with ``</s>`` (its EOS, id 0 in the tiny tokenizer): DeepSpeed-Chat's
#: ``num_padding_at_beginning=1``.
OPT_IDS = [[0, *ids] for ids in F.IDS]


@pytest.fixture(scope="module")
def opt_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepSpeed-Chat reward model on an OPT whose ``word_embed_proj_dim`` (24) is not its ``hidden_size`` (32)."""
    root = tmp_path_factory.mktemp("opt")
    return F.save_deepspeed_chat(F.tiny_opt(root / "base"), root / "ds")


def test_opt_projection_width_scores_and_converts(opt_ds: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    state = torch.load(opt_ds / "pytorch_model.bin", weights_only=True)
    assert state["v_head.weight"].shape == (1, 24)  # word_embed_proj_dim, not hidden_size (reward_model.py:21-26)
    want = [F.deepspeed_chat_reward(opt_ds, ids) for ids in OPT_IDS]
    assert vhtool_scores(opt_ds, OPT_IDS, allow_pickle=True) == pytest.approx(want, abs=TOL)
    for to in ("seq-cls", "vhtool", "deepspeed-chat"):
        out = tmp_path / to
        convert_checkpoint(opt_ds, out, to=to, allow_pickle=True)
        assert vhtool_scores(out, OPT_IDS, allow_pickle=True) == pytest.approx(want, abs=TOL), to
        back = tmp_path / f"{to}-back"
        convert_checkpoint(out, back, to="deepspeed-chat", allow_pickle=True)
        again = torch.load(back / "pytorch_model.bin", weights_only=True)
        assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state), to
        F.deepspeed_chat_load(back)  # strict
    # transformers' OPTForSequenceClassification sizes its score by word_embed_proj_dim too: a strict load, and its
    # per-token logits at DeepSpeed-Chat's token are DeepSpeed-Chat's reward
    model, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "seq-cls", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.score.weight.shape == (1, 24)
    with torch.no_grad():
        hidden = model.model(torch.tensor([OPT_IDS[0]])).last_hidden_state
        logits = model.score(hidden)[0, :, 0]
    eos_at = OPT_IDS[0].index(0, 1) if 0 in OPT_IDS[0][1:] else len(OPT_IDS[0])
    assert float(logits[eos_at - 1]) == pytest.approx(want[0], abs=TOL)


@pytest.mark.parametrize(
    ("to", "needle"),
    [
        ("openrlhf", "sizes its head by the config's hidden_size (32), but this opt backbone outputs 24 wide"),
        ("trlx", "sizes its head by the config's hidden_size (32), but this opt backbone outputs 24 wide"),
        ("token-cls", "transformers has no OPTForTokenClassification"),
    ],
)
def test_opt_projection_refused_where_the_target_cannot_hold_it(
    opt_ds: Path, tmp_path: Path, to: str, needle: str
) -> None:
    out = tmp_path / "o"
    _refused(["convert", str(opt_ds), "--to", to, "--allow-pickle", "-o", str(out)], out, opt_ds, needle)


# ------------------------------------------------------------------------------ trlx's hydra (frozen_head.*)
def test_trlx_hydra_branch_reported_kept_for_trlx_dropped_elsewhere(tmp_path: Path) -> None:
    w, b = torch.randn(1, 64), torch.tensor([0.0])
    src = F.save_trlx("tiny-gpt2", tmp_path / "hydra", head=linear_as_mlp(w, b), hydra_layers=1)
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    frozen = {k: v for k, v in state.items() if k.startswith("frozen_head.")}
    assert "frozen_head.decoder_blocks.0.attn.c_attn.weight" in frozen and "frozen_head.lm_head.weight" in frozen
    want = [F.trlx_value(src, ids) for ids in F.IDS]
    assert vhtool_scores(src, allow_pickle=True) == pytest.approx(want, abs=TOL)  # the branch is not the value
    det = detect_framework(set(state), json.loads((src / "config.json").read_text()))
    assert det is not None and det.hydra and "hydra reference branch frozen_head.*" in det.describe()

    kept = convert_checkpoint(src, tmp_path / "trlx", to="trlx", allow_pickle=True)
    assert [n for n in kept.notes if "frozen_head" in n] == [
        "kept trlx's hydra reference branch frozen_head.* "
        f"({len(frozen)} tensors: 1 decoder block, final norm, LM head) unchanged, for trlx's "
        "AutoModelForCausalLMWithHydraValueHead"
    ]
    again = torch.load(tmp_path / "trlx" / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in frozen.items())
    F.trlx_load(tmp_path / "trlx")  # the hydra class, strict
    assert vhtool_scores(tmp_path / "trlx", allow_pickle=True) == pytest.approx(want, abs=TOL)

    res = CliRunner().invoke(
        app, ["convert", str(src), "--to", "vhtool", "--allow-pickle", "-o", str(tmp_path / "vh")]
    )
    assert res.exit_code == 0, res.output
    dropped = [line for line in res.output.splitlines() if "frozen_head" in line]
    assert len(dropped) == 1 and "dropped trlx's hydra reference branch" in dropped[0], res.output
    assert not any(k.startswith("frozen_head.") for k in load_file(str(tmp_path / "vh" / "model.safetensors")))
    assert vhtool_scores(tmp_path / "vh") == pytest.approx(want, abs=TOL)


# --------------------------------------------------------------------- inspect-layers on pickle-only checkpoints
def test_inspect_pickle_needs_allow_pickle(sources: dict[str, Path]) -> None:
    src = sources["deepspeed-chat"]
    before = tree_bytes(src)
    res = CliRunner().invoke(app, ["inspect-layers", str(src)])
    assert res.exit_code == 2, res.output
    assert "--allow-pickle" in res.output and "Traceback" not in res.output and "group" not in res.output
    res = CliRunner().invoke(app, ["inspect-layers", str(src), "--json"])  # --json: the error object, nothing else
    assert res.exit_code == 2 and json.loads(res.stdout)["error"]["type"] == "InputError", res.output
    assert "--allow-pickle" in json.loads(res.stdout)["error"]["message"]
    assert tree_bytes(src) == before


@pytest.mark.parametrize(
    ("kind", "convention", "needle"),
    [
        ("deepspeed-chat", "deepspeed-chat", "deepspeed-chat reward"),
        ("deepspeed-chat-legacy", "deepspeed-chat", "legacy spelling rwtranrsformer."),
        ("trlx", "trlx", "trlx critic"),
    ],
)
def test_inspect_pickle_names_convention_and_readout(
    sources: dict[str, Path], kind: str, convention: str, needle: str
) -> None:
    res = CliRunner().invoke(
        app, ["inspect-layers", str(sources[kind]), "--allow-pickle", "--json", "--require-value-head"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    vh = report["value_head"]
    assert vh["found"] and vh["ok"] and vh["convention"] == convention, vh
    rule = TABLE[convention].readout if convention != "trlx" else "last"
    assert any(needle in n and f"readout {rule}" in n for n in vh["notes"]), vh["notes"]
    assert {t["file"] for t in report["tensors"]} == {"pytorch_model.bin"}
    assert not any(g["label"].startswith("v_head") for g in report["groups"])  # trlx's MLP is the head, not blocks


def test_inspect_pickle_hydra_and_bare_state_dict(sources: dict[str, Path], tmp_path: Path) -> None:
    hydra = F.save_trlx("tiny-gpt2", tmp_path / "hydra", hydra_layers=1)
    res = CliRunner().invoke(app, ["inspect-layers", str(hydra), "--allow-pickle"])
    assert res.exit_code == 0, res.output
    assert "trlx's hydra reference branch frozen_head.* (15 tensors: 1 decoder block, final norm, LM head)" in (
        " ".join(res.output.split())
    )
    bare = tmp_path / "rm"  # trlx's summarisation RM: transformer.* + v_head.weight, no config.json
    bare.mkdir()
    ds = torch.load(sources["deepspeed-chat"] / "pytorch_model.bin", weights_only=True)
    torch.save({k.replace("rwtransformer.", "transformer."): v for k, v in ds.items()}, bare / "pytorch_model.bin")
    res = CliRunner().invoke(app, ["inspect-layers", str(bare), "--allow-pickle", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["value_head"]["convention"] == "trlx-rm"
    assert any("readout before-eos" in n for n in report["value_head"]["notes"])
    assert any("--config-from" in n for n in report["notes"])


def test_inspect_opt_projection_head_is_ok(opt_ds: Path) -> None:
    res = CliRunner().invoke(app, ["inspect-layers", str(opt_ds), "--allow-pickle", "--json", "--require-value-head"])
    assert res.exit_code == 0, res.output
    vh = json.loads(res.stdout)["value_head"]
    assert vh["heads"][0]["shape"] == [1, 24] and vh["hidden_size"] == 24 and vh["ok"], vh


# ---------------------------------------------------------------- DeepSpeed-Chat's vocabulary (a multiple of 8)
def test_deepspeed_chat_vocab_fixed_for_transformers_targets(sources: dict[str, Path], tmp_path: Path) -> None:
    """A config that lags the resized embedding (the base model's config.json, 663, beside 664 rows, as when it is
    copied next to the weights save_zero_three_model writes): converted targets load strictly in transformers."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    src = tmp_path / "ds"
    src.mkdir()
    for p in sources["deepspeed-chat"].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "config.json").write_bytes((F.builtin("tiny-gpt2") / "config.json").read_bytes())
    assert torch.load(src / "pytorch_model.bin", weights_only=True)["rwtransformer.wte.weight"].shape[0] == 664
    want = [F.deepspeed_chat_reward(src, ids) for ids in F.IDS]  # DeepSpeed-Chat resizes before loading: fine there
    assert vhtool_scores(src, allow_pickle=True) == pytest.approx(want, abs=TOL)
    res = convert_checkpoint(src, tmp_path / "seq", to="seq-cls", allow_pickle=True)
    assert any("vocab_size 663, the embedding has 664 rows: vocab_size set to it" in n for n in res.notes), res.notes
    assert json.loads((tmp_path / "seq" / "config.json").read_text())["vocab_size"] == 664
    _, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "seq", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    _, info = AutoModel.from_pretrained(tmp_path / "seq", output_loading_info=True)  # the backbone: all but the head
    assert not info["missing_keys"] and not info["mismatched_keys"] and info["unexpected_keys"] == {"score.weight"}
    assert vhtool_scores(tmp_path / "seq") == pytest.approx(want, abs=TOL)


def test_to_deepspeed_chat_pads_the_embedding_to_a_multiple_of_8(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["openrlhf"]  # tiny-llama: 666 tokens, which DeepSpeed-Chat's create_hf_model resizes to 672
    res = convert_checkpoint(src, tmp_path / "ds", to="deepspeed-chat")
    assert any("666 rows padded with zeros to 672" in n for n in res.notes), res.notes
    state = torch.load(tmp_path / "ds" / "pytorch_model.bin", weights_only=True)
    emb = state["rwtransformer.embed_tokens.weight"]
    original = load_file(str(src / "model.safetensors"))["model.embed_tokens.weight"]
    assert emb.shape[0] == 672 and torch.equal(emb[:666], original) and not emb[666:].any()
    F.deepspeed_chat_load(tmp_path / "ds")  # resizes to 672, then every key matches (strict)


# --------------------------------------------------- the header-level path: readout-change line, --role, chains
def test_header_path_says_when_the_readout_changes_and_honours_role(
    sources: dict[str, Path], expected: dict[str, Any], tmp_path: Path
) -> None:
    src = sources["openrlhf-legacy"]  # OpenRLHF -> vhtool renames the head in the headers (no torch)
    res = CliRunner().invoke(app, ["convert", str(src), "--to", "vhtool", "-o", str(tmp_path / "vh")])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "vhtool reads a reward at rule last, openrlhf at eos: vhtool.json records eos" in flat, res.output
    manifest = json.loads((tmp_path / "vh" / "vhtool.json").read_text())
    assert manifest["conversion"]["readout"] == "eos"
    assert vhtool_scores(tmp_path / "vh") == pytest.approx(expected["openrlhf-legacy"], abs=TOL)

    # --role critic: OpenRLHF's critic reads per token (last), as vhtool does: recorded, and no change to report
    res = convert_checkpoint(src, tmp_path / "vh-critic", to="vhtool", role="critic")
    manifest = json.loads((tmp_path / "vh-critic" / "vhtool.json").read_text())
    assert (manifest["role"], manifest["conversion"]["readout"]) == ("critic", "last")
    assert not any("reads a" in n for n in res.notes), res.notes


def test_a_chain_of_conversions_keeps_the_first_sources_number(
    sources: dict[str, Path], expected: dict[str, Any], tmp_path: Path
) -> None:
    """DeepSpeed-Chat -> seq-cls -> token-cls (header level) -> openrlhf (framework path): every step records
    DeepSpeed-Chat's rule and role, so `score` keeps giving DeepSpeed-Chat's number."""
    convert_checkpoint(sources["deepspeed-chat"], tmp_path / "a", to="seq-cls", allow_pickle=True)
    res = convert_checkpoint(tmp_path / "a", tmp_path / "b", to="token-cls")
    assert any("token-cls reads a reward at rule last, seq-cls at before-eos" in n for n in res.notes), res.notes
    convert_checkpoint(tmp_path / "b", tmp_path / "c", to="openrlhf")
    for step in ("a", "b", "c"):
        manifest = json.loads((tmp_path / step / "vhtool.json").read_text())
        assert (manifest["role"], manifest["conversion"]["readout"]) == ("reward", "before-eos"), step
        assert vhtool_scores(tmp_path / step) == pytest.approx(expected["deepspeed-chat"], abs=TOL), step


# ------------------------------------------------------------------------------------- a framework's Hub repo
def test_score_a_framework_checkpoint_by_hub_id(
    sources: dict[str, Path], expected: dict[str, Any], hub_server: Any
) -> None:
    """OpenRLHF (safetensors) and DeepSpeed-Chat (pickle, --allow-pickle) repos on the loopback Hub: the framework's
    number, as from the local folder."""
    from huggingface_hub import HfApi

    api = HfApi()
    for kind, repo in (("openrlhf", "user/openrlhf-rm"), ("deepspeed-chat", "user/ds-rm")):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(sources[kind]))
        options = {"allow_pickle": True} if kind == "deepspeed-chat" else {}
        assert vhtool_scores(repo, **options) == pytest.approx(expected[kind], abs=TOL), kind


def test_header_level_convert_refuses_a_class_transformers_does_not_have(tmp_path: Path) -> None:
    """OPT has no ...ForTokenClassification: the header-level path refuses it too (it wrote the name before)."""
    opt = F.tiny_opt(tmp_path / "opt")
    runner = CliRunner()
    policy = tmp_path / "policy"
    assert runner.invoke(app, ["init", str(opt), "-o", str(policy), "-q"]).exit_code == 0
    before = tree_bytes(policy)
    res = runner.invoke(app, ["convert", str(policy), "--to", "token-cls", "-o", str(tmp_path / "tc")])
    assert res.exit_code == 2 and "transformers has no OPTForTokenClassification" in res.stderr, res.output
    assert "convert --to seq-cls" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "tc").exists() and tree_bytes(policy) == before
    res = runner.invoke(app, ["convert", str(policy), "--to", "seq-cls", "-o", str(tmp_path / "sc")])  # the suggestion
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "sc" / "config.json").read_text())
    assert config["architectures"] == ["OPTForSequenceClassification"]
