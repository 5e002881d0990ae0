"""The speed model's arithmetic (pure), and calibration through real llama.cpp on tiny probe models: cached per
machine, build, backend and thread count; a damaged cache is a note and a fresh calibration, never a crash."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from qwenbench.calibrate import calibrate, calibration_key, load_speed_calibration, probe_bytes_for
from qwenbench.calibration import forget_speed_observations, record_speed_observations
from qwenbench.catalog import get_model
from qwenbench.errors import QwenbenchError
from qwenbench.fit import RunConfig, layer_devices, recurrent_state_bytes, repacked_on_cpu
from qwenbench.harness import run_batch
from qwenbench.machine import describe_machine
from qwenbench.network import Link, network_cost
from qwenbench.recipe import tensor_table
from qwenbench.results import read_records
from qwenbench.runspec import RunSettings
from qwenbench.speed import (
    EXPERT_BATCH_TOKENS,
    SpeedCalibration,
    SpeedObservation,
    TypeRate,
    predict_speed,
    refine_from,
)
from qwenbench.tensors import TensorInfo

from .conftest import run_cli

GB = 1e9


def _calibration(**rates: tuple[float, float]) -> SpeedCalibration:
    return SpeedCalibration("k", {name: TypeRate(tg * GB, pp * GB) for name, (tg, pp) in rates.items()},
                            token_s=0.001, layer_s=0.0001)


def test_decode_is_each_tensors_bytes_over_its_types_rate_plus_fixed_costs() -> None:
    spec = get_model("qwen3-8b")
    table = tensor_table(spec, "Q4_K_M")
    calibration = _calibration(Q4_K=(10, 100), Q6_K=(12, 150), F32=(20, 400))
    predicted = predict_speed(table, spec.shape(), RunConfig(n_ctx=4096), calibration)
    by_type: dict[str, float] = {}
    for tensor in table.tensors:
        share = 1 / spec.n_vocab if tensor.name == "token_embd.weight" else 1.0  # 8B has its own output layer
        by_type[tensor.type_name] = by_type.get(tensor.type_name, 0) + tensor.n_bytes * share
    weights = by_type["Q4_K"] / 10e9 + by_type["Q6_K"] / 12e9 + by_type["F32"] / 20e9
    assert predicted.parts["weights"] == pytest.approx(weights)
    assert predicted.parts["fixed"] == pytest.approx(0.001 + 0.0001 * spec.n_layer)
    assert predicted.tg_ts == pytest.approx(1 / (weights + 0.001 + 0.0001 * spec.n_layer))
    assert predicted.source == "calibrated here" and predicted.uncertainty == pytest.approx(0.05)
    # prefill: the layers' weights per prompt token at the batch rates, but the last layer's FFN and the output
    # layer, which llama.cpp runs for the prompt's output token only: once a prompt, at the decode rates
    last = spec.n_layer - 1
    batch = [t for t in table.tensors if t.layer is not None and not (t.layer == last and ".ffn_" in t.name)]
    once = [t for t in table.tensors if t.name == "output.weight" or (t.layer == last and ".ffn_" in t.name)]
    assert len(once) == 5  # output, and the last FFN's gate, up, down and norm
    rates = {"Q4_K": 100e9, "Q6_K": 150e9, "F32": 400e9}
    decode_rates = {"Q4_K": 10e9, "Q6_K": 12e9, "F32": 20e9}
    batch_s = sum(t.n_bytes / rates[t.type_name] for t in batch)
    once_s = sum(t.n_bytes / decode_rates[t.type_name] for t in once)
    assert predicted.pp_ts == pytest.approx(1 / (batch_s + once_s / 512))
    assert predicted.ttft_ms == pytest.approx((136 * batch_s + once_s + 1 / predicted.tg_ts) * 1e3)


def test_moe_reads_only_the_used_experts_and_depth_reads_the_cache() -> None:
    spec = get_model("qwen3-30b-a3b")
    table = tensor_table(spec, "Q4_K_M")
    calibration = _calibration(Q4_K=(10, 100), Q6_K=(10, 100), Q8_0=(10, 100), F32=(10, 100), F16=(10, 100))
    config = RunConfig(n_ctx=8192)
    shallow = predict_speed(table, spec.shape(), config, calibration)
    expert_bytes = sum(t.n_bytes for t in table.tensors if t.is_expert)
    other = sum(t.n_bytes for t in table.tensors if not t.is_expert and t.name != "token_embd.weight")
    embd = next(t for t in table.tensors if t.name == "token_embd.weight").n_bytes / spec.n_vocab
    assert shallow.parts["weights"] == pytest.approx((expert_bytes * 8 / 128 + other + embd) / 10e9)
    # attention measured at two depths, dearer per cell at the deeper one (the cache outgrew the CPU's caches)
    calibration = replace(calibration, attention=((8, 1024, 1e-12, 1e-13), (8, 4096, 3e-12, 2e-13)))
    deep = predict_speed(table, spec.shape(), config, calibration, depth=4096)
    head_work = spec.n_layer * spec.n_head * spec.head_dim
    assert deep.parts["attention"] == pytest.approx(4096 * head_work * 3e-12)
    assert deep.tg_ts < shallow.tg_ts
    between = predict_speed(table, spec.shape(), config, calibration, depth=2560)
    assert between.parts["attention"] == pytest.approx(2560 * head_work * 2e-12)  # interpolated
    assert calibration.attention_at(100) == (1e-12, 1e-13) and calibration.attention_at(8192) == (3e-12, 2e-13)
    # per query head, a model whose KV heads serve fewer query heads pays more: interpolated by ratio in log2
    by_ratio = replace(calibration, attention=((2, 512, 4e-12, 4e-13), (8, 512, 1e-12, 1e-13)))
    assert by_ratio.attention_at(512, 4) == pytest.approx((2.5e-12, 2.5e-13))
    assert by_ratio.attention_at(512, 1) == (4e-12, 4e-13) and by_ratio.attention_at(512, 16) == (1e-12, 1e-13)
    assert spec.n_head // spec.n_head_kv == 8  # 30B-A3B: the ratio-8 points above
    # prompt tokens attend over the depth and half the prompt, less the half-prompt the probes already held
    prefill = predict_speed(table, spec.shape(), config, calibration, depth=4096)
    extra = 1 / prefill.pp_ts - 1 / predict_speed(table, spec.shape(), config, _calibration(
        Q4_K=(10, 100), Q6_K=(10, 100), Q8_0=(10, 100), F32=(10, 100), F16=(10, 100))).pp_ts
    assert extra == pytest.approx((4096 + 256 - 64) * head_work * 2e-13)
    assert SpeedCalibration.from_json(calibration.to_json()) == calibration


def test_moe_experts_prefill_at_their_own_rate_per_type() -> None:
    spec = get_model("qwen3-30b-a3b")
    table = tensor_table(spec, "Q4_K_M")
    dense = _calibration(Q4_K=(10, 100), Q6_K=(10, 100), Q8_0=(10, 100), F32=(10, 100), F16=(10, 100))
    calibration = replace(dense, moe_pp_rates={"Q4_K": 50 * GB, "Q6_K": 40 * GB})
    shape, config = spec.shape(), RunConfig(n_ctx=4096)
    share = 8 / 128
    last = spec.n_layer - 1
    batch = sum(t.n_bytes * share / (50e9 if t.type_name == "Q4_K" else 40e9) if t.is_expert else t.n_bytes / 100e9
                for t in table.tensors if t.layer is not None and not (t.layer == last and ".ffn_" in t.name))
    # the output token's, once a prompt: the output layer and the last layer's FFN (its used experts), decode rate
    once = sum(t.n_bytes * (share if t.is_expert else 1) / 10e9 for t in table.tensors
               if t.name == "output.weight" or (t.layer == last and ".ffn_" in t.name))
    predicted = predict_speed(table, shape, config, calibration, n_prompt=512)
    assert 1 / predicted.pp_ts == pytest.approx(batch + once / 512)  # no attention measured: none added
    assert predicted.ttft_ms == pytest.approx((136 * batch + once + 1 / predicted.tg_ts) * 1e3)
    # decode is untouched: experts are read once a token whatever their batch kernels do
    assert predicted.tg_ts == pytest.approx(predict_speed(table, shape, config, dense).tg_ts)
    assert predicted.source == "calibrated here"
    # an expert type not measured takes its dense rate scaled as the measured types' are on the median
    rate, measured = calibration.expert_pp_rate("Q8_0")
    assert not measured and rate == pytest.approx(100e9 * statistics.median([0.5, 0.4]))
    assert dense.expert_pp_rate("Q4_K") == (100e9, False)  # nothing measured: the dense rate, said so
    assert "MoE experts of Q4_K, Q6_K at a borrowed prefill rate" in predict_speed(table, shape, config, dense).source
    assert SpeedCalibration.from_json(calibration.to_json()) == calibration


def test_an_unmeasured_type_borrows_the_nearest_in_bits() -> None:
    calibration = _calibration(Q4_K=(10, 100), Q8_0=(5, 50))
    rate, measured = calibration.rate("Q5_K")  # 5.5 bits: nearer 4.5 than 8.5
    assert not measured and rate == calibration.rates["Q4_K"]
    spec = get_model("qwen3-0.6b")
    predicted = predict_speed(tensor_table(spec, "Q4_K_M"), spec.shape(), RunConfig(n_ctx=512), calibration)
    assert "from the nearest measured type" in predicted.source and predicted.uncertainty > 0.1


def test_calibration_through_llama_cpp_is_cached_per_key(tmp_path: Path, tiny_dense: Path) -> None:
    machine = describe_machine()
    small = {"n_embd": 256, "n_ff": 512, "n_head": 2, "n_head_kv": 1, "head_dim": 128}
    seen: list[str] = []
    moe = {"n_layer": 2, "n_embd": 256, "n_ff_exp": 256, "n_expert": 8, "n_expert_used": 2, "n_head": 4,
           "n_head_kv": 1, "head_dim": 64}
    calibration = calibrate(machine, 1, types=("Q4_0", "F16"), rounds=1, probe_shape=small, probe_bytes=1 << 20,
                            attention_depths=(32, 64), attention_layers=4, moe_shape=moe,
                            on_progress=lambda what, done, total: seen.append(what))
    assert set(calibration.rates) == {"Q4_0", "F16"}
    # a type this CPU backend repacks (Q4_0: AVX2, Arm) is measured without its repacked copies too
    repacks = repacked_on_cpu(TensorInfo("blk.0.ffn_up.weight", 2, (256, 512)), machine.hardware.cpu.features)
    assert set(calibration.plain_rates) == ({"Q4_0"} if repacks else set())
    assert all(r.tg_bytes_per_s > 1e8 and r.pp_bytes_per_s > 1e8 for r in calibration.plain_rates.values())
    # experts measured for the quantized type only; 16-bit experts borrow (see the arithmetic test)
    assert set(calibration.moe_pp_rates) == {"Q4_0"} and calibration.moe_pp_rates["Q4_0"] > 1e8
    assert set(calibration.plain_moe_pp_rates) == set(calibration.plain_rates)  # and without repacking, where so
    assert all(rate > 1e8 for rate in calibration.plain_moe_pp_rates.values())
    # and at a batch that gives each expert few tokens, as a short prompt does
    assert set(calibration.moe_pp_rates_few) == {"Q4_0"} and calibration.moe_pp_rates_few["Q4_0"] > 1e8
    assert set(calibration.plain_moe_pp_rates_few) == set(calibration.plain_moe_pp_rates)
    assert calibration.recurrent_byte_s > 0  # a linear-attention layer's work per byte of state (tiny hybrid probe)
    assert all(r.tg_bytes_per_s > 1e8 and r.pp_bytes_per_s > 1e8 for r in calibration.rates.values())
    assert calibration.token_s >= 0 and calibration.layer_s >= 0 and seen[-1] == "done"
    # at each depth, for KV heads serving 2, 4 and 8 query heads
    assert [(gqa, depth) for gqa, depth, _, _ in calibration.attention] == [(2, 32), (2, 64), (4, 32), (4, 64),
                                                                            (8, 32), (8, 64)]
    cached, note = load_speed_calibration(calibration_key(machine, 1))
    assert cached == calibration and note is None
    assert load_speed_calibration(calibration_key(machine, 2)) == (None, None)  # another thread count: not this one
    assert calibration_key(machine, 1) != calibration_key(machine, 2)
    # a run with that thread count records the speed model's figures beside what it measured (schema 6)
    out = tmp_path / "r.csv"
    result = run_cli("run", "--gguf", str(tiny_dense), "-t", "1", "-p", "8", "-n", "4", "-r", "1", "--no-ttft",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = {r["test"]: r for r in read_records(out)}
    assert rows["pp8"]["predicted_pp_ts"] > 0 and rows["pp8"]["predicted_tg_ts"] is None
    assert rows["tg4"]["predicted_tg_ts"] > 0 and rows["tg4"]["predicted_pp_ts"] is None


@pytest.mark.parametrize("content", [b"\x00not json", b'["a list"]', json.dumps({"K": {"rates": {}}}).encode()])
def test_a_damaged_cache_is_a_note_never_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 content: bytes) -> None:
    monkeypatch.setenv("QWENBENCH_CACHE_DIR", str(tmp_path))
    (tmp_path / "speed.json").write_bytes(content)
    cached, note = load_speed_calibration("K")
    assert cached is None and note is not None and "calibrating afresh" in note


def test_probes_outgrow_the_last_level_cache_within_bounds() -> None:
    assert probe_bytes_for(32 << 20) == 128 << 20  # four times the cache, never below 128 MB
    assert probe_bytes_for(40 << 20) == 160 << 20
    assert probe_bytes_for(105 << 20) == 192 << 20  # a server's shared L3: capped
    assert probe_bytes_for(0) == 192 << 20  # unknown: the cap


def test_one_child_runs_a_batch_of_models_and_fails_whole(tmp_path: Path, tiny_dense: Path, tiny_moe: Path) -> None:
    base = RunSettings(model_path="", n_prompt=(8,), n_gen=(4,), repetitions=2, n_threads=1, ttft=False)
    batch = [replace(base, model_path=str(tiny_dense)), replace(base, model_path=str(tiny_moe), n_depth=(16,))]
    seen: list[int] = []
    results = run_batch(batch, log_dir=tmp_path, on_event=lambda e: seen.append(e["index"])
                        if e.get("event") == "model" else None)
    assert seen == [0, 1] and len(results) == 2
    for settings, by_test in zip(batch, results, strict=True):
        assert {t.name for t in by_test} == {t.name for t in settings.tests()}
        assert all(len(r.samples_ns) == 2 and min(r.samples_ns) > 0 for r in by_test.values())
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(QwenbenchError) as failed:
        run_batch([batch[0], replace(base, model_path=str(broken))], log_dir=tmp_path)
    assert "calibration probe failed" in failed.value.message and "log" in (failed.value.hint or "")


def test_run_without_calibration_neither_measures_nor_predicts(tmp_path: Path, tiny_dense: Path) -> None:
    out = tmp_path / "r.csv"
    environment = {"QWENBENCH_CACHE_DIR": str(tmp_path / "cache"), "QWENBENCH_CALIBRATE": "1"}
    result = run_cli("run", "--gguf", str(tiny_dense), "-t", "1", "-p", "8", "-n", "4", "-r", "1", "--no-ttft",
                     "--no-calibrate", "--out", str(out), env=environment)
    assert result.returncode == 0, result.stderr
    assert "calibrating" not in result.stderr and not (tmp_path / "cache" / "speed.json").exists()
    assert all(r["predicted_tg_ts"] is None and r["predicted_pp_ts"] is None for r in read_records(out))


def test_measured_runs_refine_predictions_per_kind_of_model() -> None:
    observations = [SpeedObservation("tg", False, "qwen3-4b Q4_K_M", r) for r in (1.10, 1.12, 1.50)]  # one model
    observations += [SpeedObservation("tg", False, "qwen3-8b Q4_K_M", 1.06),
                     SpeedObservation("tg", False, "broken Q4_K_M", 9.0),  # implausible: ignored
                     SpeedObservation("pp", False, "qwen3-8b Q4_K_M", 0.9),
                     SpeedObservation("tg", True, "qwen3-30b-a3b Q3_K_L", 1.2)]
    refinement = refine_from(observations)
    # per model its median (1.12 for the 4B, however often it ran), then the median across models
    assert refinement == (("pp", False, pytest.approx(0.9), 1), ("tg", False, pytest.approx(1.09), 2),
                          ("tg", True, pytest.approx(1.2), 1))
    spec = get_model("qwen3-8b")
    table = tensor_table(spec, "Q4_K_M")
    base = _calibration(Q4_K=(10, 100), Q6_K=(12, 150), F32=(20, 400))
    refined = replace(base, refinement=refinement)
    plain = predict_speed(table, spec.shape(), RunConfig(n_ctx=4096), base)
    better = predict_speed(table, spec.shape(), RunConfig(n_ctx=4096), refined)
    assert better.tg_ts == pytest.approx(plain.tg_ts * 1.09) and better.pp_ts == pytest.approx(plain.pp_ts * 0.9)
    assert better.source == "calibrated here, refined by 2 measured models"
    # at depth, nothing measured yet: the calibration's own figure
    deep = predict_speed(table, spec.shape(), RunConfig(n_ctx=8192), refined, depth=4096)
    assert deep.tg_ts == pytest.approx(predict_speed(table, spec.shape(), RunConfig(n_ctx=8192), base,
                                                     depth=4096).tg_ts)
    moe = get_model("qwen3-30b-a3b")
    moe_table = tensor_table(moe, "Q4_K_M")
    assert predict_speed(moe_table, moe.shape(), RunConfig(n_ctx=4096), refined).tg_ts == pytest.approx(
        1.2 * predict_speed(moe_table, moe.shape(), RunConfig(n_ctx=4096), base).tg_ts)  # MoE from MoE only


def test_refinement_is_kept_per_calibration_and_forgotten_by_a_fresh_one(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWENBENCH_CACHE_DIR", str(tmp_path))
    calibration = _calibration(Q8_0=(10, 100))
    (tmp_path / "speed.json").write_text(json.dumps({"K": calibration.to_json(), "L": calibration.to_json()}))
    record_speed_observations("K", [SpeedObservation("tg", False, "qwen3-4b Q4_K_M", 1.2)])
    (tmp_path / "speed-runs.json").write_text(json.dumps({
        **json.loads((tmp_path / "speed-runs.json").read_text()), "L": [{"kind": "tg"}, "junk"]}))
    loaded, note = load_speed_calibration("K")
    assert note is None and loaded is not None and loaded.refined("tg", False) == (pytest.approx(1.2), 1)
    other, _ = load_speed_calibration("L")  # unreadable lessons are left out, the calibration stands
    assert other is not None and other.refinement == ()
    forget_speed_observations("K")
    again, _ = load_speed_calibration("K")
    assert again is not None and again.refinement == ()


def test_the_cache_key_changes_with_the_build_the_backend_and_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import qwenbench.calibrate as calibrate_module

    machine = describe_machine()
    key = calibration_key(machine, 2)
    with_cuda = replace(machine, hardware=replace(machine.hardware, backends=("CUDA", "CPU")))
    assert calibration_key(with_cuda, 2) != key and "CUDA,CPU" in calibration_key(with_cuda, 2)
    assert calibration_key(machine, 4) != key
    monkeypatch.setattr(calibrate_module, "_llama_version", lambda: "0.3.99")
    assert calibration_key(machine, 2) != key and "0.3.99" in calibration_key(machine, 2)


def test_rpc_workers_compute_at_this_cpus_rates_and_add_the_wire_time() -> None:
    spec = get_model("qwen3-0.6b")
    shape = spec.shape()
    table = tensor_table(spec, "Q4_K_M")
    calibration = _calibration(Q4_K=(10, 100), Q6_K=(12, 150), F32=(20, 400), Q8_0=(15, 200))
    here = predict_speed(table, shape, RunConfig(n_ctx=1024), calibration, depth=100)
    worker = RunConfig(n_ctx=1024, n_gpu_layers=-1, gpu=True, offload_kind="rpc")
    # without a link, the same work as on the host: a worker's CPU is taken as this one
    unlinked = predict_speed(table, shape, worker, calibration, depth=100)
    assert unlinked.tg_ts == pytest.approx(here.tg_ts, rel=1e-3)
    assert unlinked.pp_ts == pytest.approx(here.pp_ts, rel=1e-3)
    assert "workers' CPUs taken as fast as this one's" in unlinked.source
    link = Link("10.0.0.2:50052", rtt_s=2e-3, bytes_per_s=25e6)
    linked = predict_speed(table, shape, worker, calibration, depth=100, links=(link,))
    wire = network_cost(shape, layer_devices(shape, worker), (link,), n_tokens=1, n_outputs=1, n_kv=256)
    assert wire.round_trips == 1
    assert linked.parts["network"] == pytest.approx(wire.seconds)
    assert 1 / linked.tg_ts == pytest.approx(1 / here.tg_ts + wire.seconds, rel=1e-3)
    # a 512-token prompt is one ubatch: one round trip and its bytes, shared by its tokens (its mask covers the 100
    # cached cells and its own 512, padded to 768)
    prompt = network_cost(shape, layer_devices(shape, worker), (link,), n_tokens=512, n_outputs=1, n_kv=768)
    assert 1 / linked.pp_ts == pytest.approx(1 / here.pp_ts + prompt.seconds / 512, rel=1e-3)


def test_without_repacking_and_on_rpc_workers_the_types_plain_rates_apply() -> None:
    spec = get_model("qwen3-0.6b")
    table = tensor_table(spec, "Q4_K_M")
    calibration = replace(_calibration(Q4_K=(10, 100), Q6_K=(12, 150), F32=(20, 400)),
                          plain_rates={"Q4_K": TypeRate(5 * GB, 200 * GB)})
    repacked = predict_speed(table, spec.shape(), RunConfig(n_ctx=1024), calibration)
    plain = predict_speed(table, spec.shape(), RunConfig(n_ctx=1024, repack=False), calibration)
    q4k = sum(t.n_bytes for t in table.tensors if t.type_name == "Q4_K")
    assert plain.parts["weights"] - repacked.parts["weights"] == pytest.approx(q4k / 5e9 - q4k / 10e9)
    assert plain.pp_ts > repacked.pp_ts
    # a worker never repacks: its layers run at the plain rates, whatever this machine's own setting
    worker = predict_speed(table, spec.shape(), RunConfig(n_ctx=1024, n_gpu_layers=-1, gpu=True, offload_kind="rpc"),
                           calibration)
    assert worker.tg_ts == pytest.approx(plain.tg_ts, rel=1e-3)
    # MoE experts without repacking: their measured rate scaled as the type's dense rate is
    assert calibration.expert_pp_rate("Q4_K", repacked=False) == calibration.expert_pp_rate("Q4_K")
    moe = replace(calibration, moe_pp_rates={"Q4_K": 60 * GB})
    assert moe.expert_pp_rate("Q4_K", repacked=False) == (pytest.approx(120 * GB), True)
    # or as measured without repacking, where calibrate measured them so
    measured = replace(moe, plain_moe_pp_rates={"Q4_K": 150 * GB})
    assert measured.expert_pp_rate("Q4_K", repacked=False) == (150 * GB, True)
    assert measured.expert_pp_rate("Q4_K") == (60 * GB, True)
    assert SpeedCalibration.from_json(measured.to_json()).plain_moe_pp_rates == {"Q4_K": 150 * GB}
    assert SpeedCalibration.from_json(calibration.to_json()).plain_rates == calibration.plain_rates


def test_a_hybrid_attends_in_its_attention_layers_only_and_carries_its_state() -> None:
    spec = get_model("qwen3.5-9b")
    shape, table = spec.shape(), tensor_table(spec, "Q4_K_M")
    calibration = replace(_calibration(Q4_K=(10, 100), Q5_K=(11, 110), Q6_K=(12, 150), Q8_0=(14, 160),
                                       F16=(16, 200), F32=(20, 400)), attention=((4, 512, 1e-12, 1e-13),))
    shallow, deep = (predict_speed(table, shape, RunConfig(n_ctx=8192), calibration, depth=d) for d in (0, 4096))
    # 8 of its 32 layers attend over the cache; the other 24 are Gated DeltaNet, with a fixed state
    assert shape.attention_layout == "24 linear + 8 full"
    assert deep.parts["attention"] == pytest.approx(4096 * 8 * spec.n_head * spec.head_dim * 1e-12)
    # which each token reads and writes back (F32, at that type's decode rate)
    assert shallow.parts["recurrent state"] == pytest.approx(2 * 24 * recurrent_state_bytes(shape) / 20e9)
    # or, calibrated, at the measured cost per byte of state (the Gated DeltaNet's work on it)
    measured = predict_speed(table, shape, RunConfig(n_ctx=8192), replace(calibration, recurrent_byte_s=1e-11))
    assert measured.parts["recurrent state"] == pytest.approx(24 * recurrent_state_bytes(shape) * 1e-11)
    assert SpeedCalibration.from_json(replace(calibration, recurrent_byte_s=1e-11).to_json()).recurrent_byte_s == 1e-11
    # a file with the MTP block runs as fast: llama.cpp does not load it
    mtp = predict_speed(tensor_table(spec, "Q4_K_M", mtp=True), spec.shape(mtp=True), RunConfig(n_ctx=8192),
                        calibration, depth=4096)
    assert spec.shape(mtp=True).n_layer == 33
    assert (mtp.tg_ts, mtp.pp_ts, mtp.ttft_ms) == pytest.approx((deep.tg_ts, deep.pp_ts, deep.ttft_ms))


def test_experts_multiplying_fewer_tokens_prefill_at_the_interpolated_rate() -> None:
    """Between the two batch sizes calibration measures experts at, the rate interpolates in log2 of the tokens an
    expert multiplies; beyond them it is the nearest's. A model's prompt gives its experts prompt x used / experts."""
    few_tokens, many_tokens = EXPERT_BATCH_TOKENS
    dense = _calibration(Q4_K=(10, 100), Q6_K=(10, 100), Q8_0=(10, 100), F32=(10, 100), F16=(10, 100))
    calibration = replace(dense, moe_pp_rates={"Q4_K": 50 * GB, "Q6_K": 40 * GB},
                          moe_pp_rates_few={"Q4_K": 20 * GB, "Q6_K": 10 * GB})
    assert calibration.expert_pp_rate("Q4_K", tokens_per_expert=many_tokens) == (50 * GB, True)
    assert calibration.expert_pp_rate("Q4_K", tokens_per_expert=few_tokens) == (pytest.approx(20 * GB), True)
    middle = math.sqrt(few_tokens * many_tokens)
    assert calibration.expert_pp_rate("Q4_K", tokens_per_expert=middle)[0] == pytest.approx(35 * GB)
    assert calibration.expert_pp_rate("Q4_K", tokens_per_expert=1)[0] == pytest.approx(20 * GB)
    assert calibration.expert_pp_rate("Q4_K", tokens_per_expert=512)[0] == pytest.approx(50 * GB)
    assert calibration.expert_pp_rate("Q4_K")[0] == pytest.approx(50 * GB)  # unsaid: the probe's own batch
    # an unmeasured type scales its dense rate as the measured ones' experts are, at each batch size
    assert calibration.expert_pp_rate("Q8_0", tokens_per_expert=few_tokens) == (
        pytest.approx(100e9 * statistics.median([0.2, 0.1])), False)
    spec = get_model("qwen3-30b-a3b")  # 8 experts of 128 a token
    table, shape, config = tensor_table(spec, "Q4_K_M"), spec.shape(), RunConfig(n_ctx=4096)
    flat = predict_speed(table, shape, config, replace(calibration, moe_pp_rates_few={}))
    split = predict_speed(table, shape, config, calibration)
    assert split.pp_ts == pytest.approx(flat.pp_ts)  # pp512: 32 tokens an expert, the probe's
    experts = {t: sum(x.n_bytes for x in table.tensors if x.is_expert and x.type_name == t and x.layer != 47) / 16
               for t in ("Q4_K", "Q6_K")}  # a prompt token's share (8 of 128) of every layer's but the last
    per_expert = 136 * 8 / 128
    extra = sum(n / calibration.expert_pp_rate(t, tokens_per_expert=per_expert)[0] - n / (rate * GB)
                for (t, n), rate in zip(experts.items(), (50, 40), strict=True))
    assert split.ttft_ms - flat.ttft_ms == pytest.approx(136 * extra * 1e3)
    assert SpeedCalibration.from_json(calibration.to_json()) == calibration
