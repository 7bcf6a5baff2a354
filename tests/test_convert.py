"""``vhtool convert``: heads moved between the vhtool, sidecar, seq-cls and token-cls conventions."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import VOCAB, tiny_config
from vhtool.checkpoint.conventions import VHEAD_BIAS, VHEAD_WEIGHT, detect_convention
from vhtool.checkpoint.init_op import HEAD_SHARD, HeadSpec, init_checkpoint
from vhtool.checkpoint.layout import INDEX_FILE, SIDECAR_FILE, open_checkpoint
from vhtool.checkpoint.safetensors_io import read_header
from vhtool.checkpoint.verify_op import verify_checkpoint

PAD = 0


# ----------------------------------------------------------------------------------------------- helpers


def tensor_bytes(directory: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every tensor of a checkpoint (weights and sidecar): name -> (dtype, shape, raw bytes)."""
    ckpt = open_checkpoint(directory)
    headers = list(ckpt.headers.values()) + ([ckpt.sidecar] if ckpt.sidecar is not None else [])
    out: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for hdr in headers:
        with open(hdr.path, "rb") as fh:
            for t in hdr.tensors.values():
                fh.seek(hdr.data_start + t.begin)
                out[t.name] = (t.dtype, t.shape, fh.read(t.nbytes))
    return out


def dir_digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def assert_verifies(directory: Path) -> None:
    result = verify_checkpoint(directory, hash_all=True)
    assert result.ok, [(c.name, c.detail) for c in result.checks if not c.ok]
    manifest = json.loads((directory / "vhtool.json").read_text())
    ckpt = open_checkpoint(directory)
    expected = set(ckpt.weight_files) | ({SIDECAR_FILE} if ckpt.sidecar is not None else set())
    assert set(manifest["files"]) == expected


def config_of(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "config.json").read_text())


def save_classifier(directory: Path, arch: str, kind: str, *, seed: int = 1, **overrides: Any) -> Path:
    """A real ``AutoModelFor{Sequence,Token}Classification`` with one label, saved by transformers."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    cfg.num_labels = 1
    cls = tf.AutoModelForSequenceClassification if kind == "seq-cls" else tf.AutoModelForTokenClassification
    model = cls.from_config(cfg).eval()
    with torch.no_grad():  # make every tensor distinctive (a zero-initialised bias would hide a lost one)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(directory)
    return directory


def batch(seed: int = 0) -> tuple[Any, Any, list[int]]:
    """A right-padded batch with no pad id among the real tokens; returns ids, mask, last real index."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 7), generator=g)
    lengths = [7, 4, 2]
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = PAD
    return ids, mask, [n - 1 for n in lengths]


def value_of(vhtool_dir: Path, ids: Any, mask: Any) -> Any:
    import torch

    from vhtool import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(vhtool_dir)).eval()
    assert model.v_head_loaded
    with torch.no_grad():
        _, _, value = model(input_ids=ids, attention_mask=mask)
    return value


def run_json(cli: Callable[..., Any], *args: Any) -> dict[str, Any]:
    res = cli("convert", *args, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def vhtool_ckpt(initialised: Callable[..., Path]) -> Callable[[str], Path]:
    """``vhtool_ckpt(arch)``: a vhtool checkpoint (normal init, zero bias) of a tiny model, made by init."""

    def make(arch: str) -> Path:
        return initialised(arch, init="normal", seed=3)

    return make


# ----------------------------------------------------------------------------------------------- vhtool -> classifiers


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_vhtool_to_seq_cls_logits_equal_value_at_last_token(
    arch: str, vhtool_ckpt: Callable[[str], Path], work: Path, cli: Callable[..., Any]
) -> None:
    import torch
    import transformers as tf

    src = vhtool_ckpt(arch)
    out = work / f"{arch}-seqcls"
    doc = run_json(cli, src, "--to", "seq-cls", "-o", out, "--pad-token-id", PAD)
    assert doc["from"] == "vhtool" and doc["to"] == "seq-cls"
    assert doc["head"]["tensors"] == ["score.weight"]
    cfg = config_of(out)
    assert cfg["architectures"] == [f"{'GPT2' if arch == 'gpt2' else 'Llama'}ForSequenceClassification"]
    assert cfg["id2label"] == {"0": "LABEL_0"} and cfg["pad_token_id"] == PAD
    # GPT-2 ties its LM head to the embeddings (nothing lost); Llama's is a separate tensor, lost by design.
    manifest = json.loads((out / "vhtool.json").read_text())
    assert manifest["conversion"]["lost"] == ([] if arch == "gpt2" else ["lm_head.weight"])
    assert doc["lost"] == manifest["conversion"]["lost"]
    assert "lm_head.weight" not in tensor_bytes(out)

    model, info = tf.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert model.config.num_labels == 1 and model.config.pad_token_id == PAD
    ids, mask, last = batch()
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, attention_mask=mask).logits
    value = value_of(src, ids, mask)
    expected = torch.stack([value[i, j] for i, j in enumerate(last)])
    assert logits.shape == (3, 1)
    torch.testing.assert_close(logits[:, 0], expected, atol=1e-5, rtol=0)
    assert_verifies(out)


def test_vhtool_to_token_cls_logits_equal_value_everywhere(
    vhtool_ckpt: Callable[[str], Path], work: Path, cli: Callable[..., Any]
) -> None:
    import torch
    import transformers as tf

    src = vhtool_ckpt("llama")
    out = work / "llama-tokcls"
    doc = run_json(cli, src, "--to", "token-cls", "-o", out)
    assert doc["head"]["tensors"] == ["score.weight", "score.bias"]  # Llama's token classifier: score + bias
    model = tf.AutoModelForTokenClassification.from_pretrained(out).eval()
    ids, mask, _ = batch(1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits[..., 0], value_of(src, ids, mask), atol=1e-5, rtol=0)
    assert_verifies(out)


def test_sharded_vhtool_to_seq_cls_matches_single_file(
    saved_model: Callable[..., Path], vhtool_ckpt: Callable[[str], Path], work: Path, cli: Callable[..., Any]
) -> None:
    import transformers as tf

    sharded = work / "llama-sharded-vh"
    init_checkpoint(
        saved_model("llama", sharded=True), sharded, head=HeadSpec("normal", seed=3), source={"model": "x"}
    )
    out_sharded, out_single = work / "llama-sharded-seqcls", work / "llama-single-seqcls"
    doc = run_json(cli, sharded, "--to", "seq-cls", "-o", out_sharded)
    run_json(cli, vhtool_ckpt("llama"), "--to", "seq-cls", "-o", out_single)
    assert doc["layout"] == "sharded" and doc["head"]["file"] == HEAD_SHARD
    assert tensor_bytes(out_sharded) == tensor_bytes(out_single)
    index = json.loads((out_sharded / INDEX_FILE).read_text())
    assert "lm_head.weight" not in index["weight_map"] and index["weight_map"]["score.weight"] == HEAD_SHARD
    assert index["metadata"]["total_size"] == sum(len(b) for _, _, b in tensor_bytes(out_sharded).values())
    _, info = tf.AutoModelForSequenceClassification.from_pretrained(out_sharded, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_verifies(out_sharded)


# ----------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("arch", "overrides"), [("gpt2", {}), ("llama", {"tie_word_embeddings": True})])
def test_seq_cls_vhtool_seq_cls_round_trip_is_byte_identical(
    arch: str, overrides: dict[str, Any], work: Path, cli: Callable[..., Any]
) -> None:
    import torch

    src = save_classifier(work / f"{arch}-hf-seqcls", arch, "seq-cls", **overrides)
    before = dir_digest(src)
    mid, back = work / f"{arch}-rt-vh", work / f"{arch}-rt-seqcls"
    doc = run_json(cli, src, "--to", "vhtool", "-o", mid)
    assert doc["from"] == "seq-cls" and doc["lost"] == []
    assert detect_convention(open_checkpoint(mid)).convention == "vhtool"
    original, middle = tensor_bytes(src), tensor_bytes(mid)
    assert middle[VHEAD_WEIGHT] == original["score.weight"]
    assert middle[VHEAD_BIAS][2] == bytes(4)  # a zero bias in the weight's dtype (F32)
    # The vhtool checkpoint works as a value-head policy: its value is the classifier's score per token.
    ids, mask, _ = batch(2)
    value = value_of(mid, ids, mask)
    assert value.shape == ids.shape and torch.isfinite(value).all()

    run_json(cli, mid, "--to", "seq-cls", "-o", back)
    again = tensor_bytes(back)
    assert again == original  # names, dtypes, shapes and every byte
    assert config_of(back)["architectures"] == config_of(src)["architectures"]
    assert dir_digest(src) == before  # the input is never modified
    assert_verifies(mid)
    assert_verifies(back)


def test_seq_cls_without_lm_head_cannot_become_a_policy(work: Path, cli: Callable[..., Any]) -> None:
    src = save_classifier(work / "llama-untied-seqcls", "llama", "seq-cls")
    for target in ("vhtool", "sidecar"):
        res = cli("convert", src, "--to", target, "-o", work / f"untied-{target}")
        assert res.exit_code == 2
        assert "needs an LM head the source does not have" in res.stderr
        assert not (work / f"untied-{target}").exists()


def test_openrlhf_value_head_and_normalisation_carried(work: Path, cli: Callable[..., Any]) -> None:
    """OpenRLHF names the head value_head.weight and keeps reward statistics in config.json."""
    from safetensors.torch import load_file, save_file

    src = save_classifier(work / "openrlhf-rm", "gpt2", "seq-cls", seed=4)
    state = load_file(src / "model.safetensors")
    state["value_head.weight"] = state.pop("score.weight")
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    cfg = config_of(src)
    cfg.update(
        architectures=["RewardModel"], normalize_reward=True, mean=0.25, std=2.0, value_head_prefix="value_head"
    )
    (src / "config.json").write_text(json.dumps(cfg))

    mid, back = work / "openrlhf-vh", work / "openrlhf-back"
    doc = run_json(cli, src, "--to", "vhtool", "-o", mid)
    assert doc["from"] == "seq-cls"
    assert config_of(mid)["architectures"] == ["GPT2LMHeadModel"]
    norm = json.loads((mid / "vhtool.json").read_text())["normalization"]
    assert norm == {"normalize_reward": True, "mean": 0.25, "std": 2.0, "value_head_prefix": "value_head"}
    doc = run_json(cli, mid, "--to", "seq-cls", "-o", back)
    assert doc["head"]["tensors"] == ["value_head.weight"]  # the recorded prefix is the default name
    assert tensor_bytes(back) == tensor_bytes(src)
    back_cfg = config_of(back)
    assert (back_cfg["mean"], back_cfg["std"], back_cfg["normalize_reward"]) == (0.25, 2.0, True)
    assert back_cfg["value_head_prefix"] == "value_head"
    # --head-name renames it for HF (score) and the config follows
    hf = run_json(cli, back, "--to", "seq-cls", "--head-name", "score", "-o", work / "openrlhf-hf")
    assert hf["head"]["tensors"] == ["score.weight"]
    assert config_of(work / "openrlhf-hf")["value_head_prefix"] == "score"


def test_gpt2_token_cls_round_trip_keeps_the_bias(work: Path, cli: Callable[..., Any]) -> None:
    src = save_classifier(work / "gpt2-hf-tokcls", "gpt2", "token-cls", seed=5)
    mid, back = work / "gpt2-tok-vh", work / "gpt2-tok-back"
    assert run_json(cli, src, "--to", "vhtool", "-o", mid)["from"] == "token-cls"
    original = tensor_bytes(src)
    assert tensor_bytes(mid)[VHEAD_BIAS] == original["classifier.bias"]
    doc = run_json(cli, mid, "--to", "token-cls", "-o", back)
    assert doc["head"]["tensors"] == ["classifier.weight", "classifier.bias"]  # GPT-2's token-classifier naming
    assert tensor_bytes(back) == original


# ----------------------------------------------------------------------------------------------- sidecar


def make_sidecar(base: Path, dst: Path, hidden: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    shutil.copytree(base, dst)
    g = torch.Generator().manual_seed(7)
    head = {VHEAD_WEIGHT: torch.randn(1, hidden, generator=g), VHEAD_BIAS: torch.tensor([0.375])}
    save_file(head, dst / SIDECAR_FILE, metadata={"format": "pt"})
    return head


@pytest.mark.parametrize("sharded", [False, True])
def test_sidecar_to_vhtool_and_back(
    sharded: bool, saved_model: Callable[..., Path], work: Path, cli: Callable[..., Any]
) -> None:
    import torch

    base = saved_model("llama", sharded=sharded)
    tag = "sharded" if sharded else "single"
    src = work / f"sidecar-{tag}"
    head = make_sidecar(base, src, hidden=32)
    vh, sc = work / f"sidecar-{tag}-vh", work / f"sidecar-{tag}-sc"

    doc = run_json(cli, src, "--to", "vhtool", "-o", vh)
    assert doc["from"] == "sidecar" and doc["lost"] == []
    assert not (vh / SIDECAR_FILE).exists()
    assert doc["head"]["file"] == (HEAD_SHARD if sharded else "model.safetensors")
    if sharded:
        index = json.loads((vh / INDEX_FILE).read_text())
        assert index["weight_map"][VHEAD_WEIGHT] == HEAD_SHARD
    base_tensors, vh_tensors = tensor_bytes(base), tensor_bytes(vh)
    assert {k: v for k, v in vh_tensors.items() if not k.startswith("v_head.")} == base_tensors
    from vhtool import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(vh))
    assert model.v_head_loaded
    torch.testing.assert_close(model.v_head.summary.weight.detach(), head[VHEAD_WEIGHT], atol=0, rtol=0)
    torch.testing.assert_close(model.v_head.summary.bias.detach(), head[VHEAD_BIAS], atol=0, rtol=0)
    assert_verifies(vh)

    doc = run_json(cli, vh, "--to", "sidecar", "-o", sc)
    assert doc["head"]["file"] == SIDECAR_FILE
    assert tensor_bytes(sc) == tensor_bytes(src)  # base bytes and both head tensors, byte for byte
    assert VHEAD_WEIGHT not in open_checkpoint(sc).tensors  # only in the sidecar
    assert_verifies(sc)


# ----------------------------------------------------------------------------------------------- TRL 1.12.0


@pytest.fixture(scope="module")
def trl_ckpt(saved_model: Callable[..., Path], work: Path) -> Path:
    out = work / "trl-gpt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's "experimental API" warning
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlValueHead

        TrlValueHead.from_pretrained(str(saved_model("gpt2"))).save_pretrained(str(out))
    return out


def test_trl_checkpoint_converts_and_bias_is_guarded(trl_ckpt: Path, work: Path, cli: Callable[..., Any]) -> None:
    import torch
    import transformers as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlValueHead
    bias = tensor_bytes(trl_ckpt)[VHEAD_BIAS]
    assert bias[2] != bytes(4)  # TRL's default init: a non-zero bias

    # seq-cls has no bias: refused, then allowed and recorded with --allow-lossy
    res = cli("convert", trl_ckpt, "--to", "seq-cls", "-o", work / "trl-seqcls")
    assert res.exit_code == 2 and "--allow-lossy" in res.stderr and "has no bias" in res.stderr
    assert not (work / "trl-seqcls").exists()
    res = cli("convert", trl_ckpt, "--to", "seq-cls", "-o", work / "trl-seqcls", "--allow-lossy")
    assert res.exit_code == 0, res.stderr
    assert "non-zero bias" in res.stderr
    lost = json.loads((work / "trl-seqcls" / "vhtool.json").read_text())["conversion"]["lost"]
    assert len(lost) == 1 and lost[0].startswith(VHEAD_BIAS)
    assert_verifies(work / "trl-seqcls")

    # token-cls holds the bias: its logits are TRL's values at every position
    out = work / "trl-tokcls"
    run_json(cli, trl_ckpt, "--to", "token-cls", "-o", out)
    ids, mask, _ = batch(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trl_model = TrlValueHead.from_pretrained(str(trl_ckpt)).eval()
    tok = tf.AutoModelForTokenClassification.from_pretrained(out).eval()
    with torch.no_grad():
        _, _, value = trl_model(input_ids=ids, attention_mask=mask)
        logits = tok(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits[..., 0], value, atol=1e-5, rtol=0)
    assert_verifies(out)

    # sidecar: TRL's tensors, byte for byte, moved out of the model file
    sc = work / "trl-sidecar"
    run_json(cli, trl_ckpt, "--to", "sidecar", "-o", sc)
    assert tensor_bytes(sc) == tensor_bytes(trl_ckpt)
    assert_verifies(sc)


# ----------------------------------------------------------------------------------------------- bad input


def test_no_known_head_lists_what_was_found(
    saved_model: Callable[..., Path], work: Path, cli: Callable[..., Any]
) -> None:
    res = cli("convert", saved_model("gpt2"), "--to", "seq-cls", "-o", work / "nohead")
    assert res.exit_code == 2
    assert "no value or reward head of a known convention" in res.stderr
    assert "transformer.*" in res.stderr and "v_head.summary.weight" in res.stderr
    assert not (work / "nohead").exists()


def test_ambiguous_heads(vhtool_ckpt: Callable[[str], Path], work: Path, cli: Callable[..., Any]) -> None:
    src = work / "ambiguous"
    shutil.copytree(vhtool_ckpt("gpt2"), src)
    make_sidecar(vhtool_ckpt("gpt2"), work / "ambiguous-tmp", hidden=32)
    shutil.copyfile(work / "ambiguous-tmp" / SIDECAR_FILE, src / SIDECAR_FILE)
    res = cli("convert", src, "--to", "seq-cls", "-o", work / "ambiguous-out")
    assert res.exit_code == 2
    assert "ambiguous" in res.stderr and "sidecar" in res.stderr and "inline" in res.stderr


def test_non_scalar_head_refused(work: Path, cli: Callable[..., Any]) -> None:
    import transformers as tf

    cfg = tiny_config("gpt2")
    cfg.num_labels = 3
    src = work / "three-labels"
    tf.AutoModelForSequenceClassification.from_config(cfg).save_pretrained(src)
    res = cli("convert", src, "--to", "vhtool", "-o", work / "three-out")
    assert res.exit_code == 2 and "only a scalar head" in res.stderr and "[3, 32]" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "vhtool"], "already in the vhtool convention"),
        (["--to", "onnx"], "'onnx' is not a choice for --to; choose one of 'vhtool', 'sidecar'"),
        (["--to", "vhtool", "--head-name", "score"], "--head-name applies to --to seq-cls or token-cls"),
        (["--to", "seq-cls", "--head-name", "reward"], "'reward' is not a choice for --head-name; choose"),
        (["--to", "seq-cls", "--pad-token-id", "-1"], "--pad-token-id must be >= 0"),
    ],
)
def test_bad_arguments(
    args: list[str], message: str, vhtool_ckpt: Callable[[str], Path], work: Path, cli: Callable[..., Any]
) -> None:
    res = cli("convert", vhtool_ckpt("gpt2"), *args, "-o", work / "bad-args")
    assert res.exit_code == 2
    assert message in res.stderr
    assert res.stderr.count("Error: ") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1  # the parser's errors too: one line


def test_not_a_checkpoint_and_existing_output(
    vhtool_ckpt: Callable[[str], Path], work: Path, cli: Callable[..., Any]
) -> None:
    empty = work / "empty"
    empty.mkdir()
    res = cli("convert", empty, "--to", "seq-cls", "-o", work / "empty-out")
    assert res.exit_code == 2 and "not a checkpoint" in res.stderr
    res = cli("convert", work / "missing", "--to", "seq-cls", "-o", work / "missing-out")
    assert res.exit_code == 2 and "no such file or directory" in res.stderr

    taken = work / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    for extra in ([], ["--force"]):  # a directory with a user's file is never replaced, not even with --force
        res = cli("convert", vhtool_ckpt("gpt2"), "--to", "seq-cls", "-o", taken, *extra)
        assert res.exit_code == 2 and "keep.txt" in res.stderr and "--force" not in res.stderr
        assert (taken / "keep.txt").read_text() == "mine" and sorted(p.name for p in taken.iterdir()) == ["keep.txt"]

    previous = work / "previous"
    res = cli("convert", vhtool_ckpt("gpt2"), "--to", "seq-cls", "-o", previous, "--quiet")
    assert res.exit_code == 0
    res = cli("convert", vhtool_ckpt("gpt2"), "--to", "seq-cls", "-o", previous)
    assert res.exit_code == 2 and "already exists" in res.stderr and "pass --force" in res.stderr
    res = cli("convert", vhtool_ckpt("gpt2"), "--to", "seq-cls", "-o", previous, "--force", "--quiet")
    assert res.exit_code == 0 and res.stdout == ""
    assert (previous / "model.safetensors").is_file()
    assert res.stderr == ""  # --quiet silences the warnings
    # without --pad-token-id and none in the config: converted, with a warning about batches
    res = cli("convert", vhtool_ckpt("gpt2"), "--to", "seq-cls", "-o", work / "nopad")
    assert res.exit_code == 0 and "no pad_token_id" in res.stderr
    assert "Wrote" in res.stdout


def test_default_output_name(
    vhtool_ckpt: Callable[[str], Path], work: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(work)
    res = cli("convert", vhtool_ckpt("llama"), "--to", "sidecar", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["out"] == "llama-vh-sidecar" and (work / "llama-vh-sidecar" / SIDECAR_FILE).is_file()
    assert read_header(work / "llama-vh-sidecar" / SIDECAR_FILE).metadata == {"format": "pt"}


def test_encoder_decoder_and_malformed_heads_refused(
    saved_model: Callable[..., Path], work: Path, cli: Callable[..., Any]
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    t5 = work / "t5-vh"
    init_checkpoint(saved_model("t5"), t5, head=HeadSpec("normal"), source={"model": "t5"})
    res = cli("convert", t5, "--to", "seq-cls", "-o", work / "t5-seqcls")
    assert res.exit_code == 2 and "encoder-decoder" in res.stderr
    res = cli("convert", t5, "--to", "sidecar", "-o", work / "t5-sidecar")  # a seq2seq value head can move
    assert res.exit_code == 0, res.stderr
    assert_verifies(work / "t5-sidecar")

    bad = work / "bad-bias"
    shutil.copytree(saved_model("gpt2"), bad)
    state = load_file(bad / "model.safetensors")
    state[VHEAD_WEIGHT] = torch.zeros(1, 32)
    state[VHEAD_BIAS] = torch.zeros(2)
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    res = cli("convert", bad, "--to", "seq-cls", "-o", work / "bad-bias-out")
    assert res.exit_code == 2 and "v_head.summary.bias is F32 [2]; expected [1]" in res.stderr
