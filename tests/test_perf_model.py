"""The offline performance model: SASS parsing and counting, occupancy, and its fit to the
measured calibration set (no GPU; a few seconds)."""

from __future__ import annotations

import json
import math

import pytest

from mnv2_fast.kernels import BlockConfig
from mnv2_fast.model import block_specs

from mnv2_fast.tools import perf_model as pm
from mnv2_fast.tools import sass as S


def listing(*lines: tuple[int, str], name: str = "kern") -> str:
    """A `cuobjdump --dump-sass` listing of (address, instruction) pairs, with the padding
    ptxas appends after the last EXIT."""
    out = ["", "\tcode for sm_90a", f"\t\tFunction : {name}"]
    for addr, text in lines:
        out.append(f"        /*{addr:04x}*/                   {text} ;   /* 0x000000000000000000 */")
        out.append("                                                    /* 0x000fc00000000000 */")
    end = lines[-1][0] + 0x10
    out.append(f"        /*{end:04x}*/                   BRA 0x{end:x};")
    out.append(f"        /*{end + 0x10:04x}*/                   NOP;")
    return "\n".join(out) + "\n"


def fn_of(*lines: tuple[int, str]) -> S.Function:
    return S.kernel(listing(*lines))


# ---------------------------------------------------------------- parsing


def test_parse_predicate_opcode_modifiers_operands():
    fn = fn_of((0x0, "@!P2 LDG.E.128 R40, desc[UR20][R8.64+0x10]"),
               (0x10, "HGMMA.64x32x16.F32 R72, R24, gdesc[UR4].tnspB, R72, gsb0"),
               (0x20, "@!PT LDS RZ, [RZ]"),
               (0x30, "EXIT"))
    ldg, hgmma, lds, _ = fn.instructions[:4]
    assert (ldg.address, ldg.predicate, ldg.opcode, ldg.modifiers) == (0, "!P2", "LDG", ("E", "128"))
    assert ldg.operands == ("R40", "desc[UR20][R8.64+0x10]")
    assert hgmma.operands == ("R72", "R24", "gdesc[UR4].tnspB", "R72", "gsb0")
    assert hgmma.mnemonic == "HGMMA.64x32x16.F32" and hgmma.predicate is None
    assert lds.never and not ldg.never
    assert fn.name == "kern"
    # The BRA-to-itself and NOP padding after the last EXIT are not part of the body.
    assert len(fn.main) == 4 and fn.instructions[-2].branch_target == 0x40


def test_parse_rejects_text_without_sass():
    with pytest.raises(ValueError, match="no SASS"):
        S.parse("not a listing\n")


def test_five_digit_addresses():
    fn = fn_of((0xFFF0, "IADD3 R1, R1, 0x1, RZ"), (0x10000, "@P0 BRA 0xfff0"), (0x10010, "EXIT"))
    assert [(lp.start, lp.end) for lp in S.find_loops(fn)] == [(0xFFF0, 0x10000)]


# ---------------------------------------------------------------- loops and weights

NESTED = (
    (0x00, "S2R R0, SR_TID.X"),
    (0x10, "IADD3 R1, R0, 0x1, RZ"),  # outer loop from here
    (0x20, "FFMA R2, R2, R3, R4"),  # inner loop from here
    (0x30, "FFMA R2, R2, R3, R4"),
    (0x40, "@P0 BRA 0x20"),  # inner back edge
    (0x50, "IADD3 R1, R1, 0x1, RZ"),
    (0x60, "@P1 BRA 0x10"),  # outer back edge
    (0x70, "@P2 BRA 0x90"),  # forward branch: no loop
    (0x80, "FADD R5, R5, R6"),  # a second outer loop
    (0x90, "@P3 BRA 0x80"),
    (0xa0, "EXIT"),
)


def test_loops_found_nested_and_ordered_by_depth_then_address():
    loops = S.find_loops(fn_of(*NESTED))
    assert [(lp.start, lp.end, lp.depth, lp.parent, lp.instructions) for lp in loops] == [
        (0x10, 0x60, 0, None, 6),
        (0x80, 0x90, 0, None, 2),
        (0x20, 0x40, 1, 0, 3),
    ]


def test_weights_multiply_the_trips_of_enclosing_loops():
    fn = fn_of(*NESTED)
    w = S.weights(fn, S.find_loops(fn), [5, 2, 3])  # outer 5, second 2, inner 3 per outer trip
    assert w == [1, 5, 15, 15, 15, 5, 5, 1, 2, 2, 1]
    c = S.count(fn, [5, 2, 3], num_warps=4)
    assert c.warp_instructions == sum(w) * 4
    assert c.by_opcode["FFMA"] == 30 * 4 and c.by_category["fp32"] == (30 + 2) * 4


def test_trip_count_mismatch_names_the_loops():
    fn = fn_of(*NESTED)
    with pytest.raises(ValueError, match=r"2 trip counts given for 3 loops.*0x10-0x60"):
        S.count(fn, [5, 2], num_warps=4)


def test_backward_branches_to_one_target_make_one_loop():
    fn = fn_of((0x00, "FFMA R2, R2, R3, R4"), (0x10, "@P0 BRA 0x0"), (0x20, "FADD R1, R1, R2"),
               (0x30, "@P1 BRA 0x0"), (0x40, "EXIT"))
    assert [(lp.start, lp.end, lp.instructions) for lp in S.find_loops(fn)] == [(0x0, 0x30, 4)]


def test_overlapping_loops_are_refused():
    fn = fn_of((0x00, "NOP"), (0x10, "NOP"), (0x20, "@P0 BRA 0x0"), (0x30, "@P1 BRA 0x10"), (0x40, "EXIT"))
    with pytest.raises(ValueError, match="overlap"):
        S.find_loops(fn)


def test_never_taken_branch_and_cold_code_after_exit_are_no_loops():
    fn = fn_of((0x00, "FFMA R2, R2, R3, R4"), (0x10, "@!PT BRA 0x0"), (0x20, "@P0 CALL.REL.NOINC 0x40"),
               (0x30, "EXIT"), (0x40, "MUFU.RCP R1, R1"), (0x50, "@P0 BRA 0x40"), (0x60, "RET.REL.NODEC R2 0x0"))
    assert S.find_loops(fn) == []
    c = S.count(fn, [], num_warps=1)
    assert c.warp_instructions == 4 and c.cold_instructions == 3


def test_a_loop_rotated_to_leave_by_its_exit_is_a_loop():
    """ptxas may close a loop after the kernel's EXIT (`@P0 EXIT; ...; BRA top`): that branch
    is the loop's, not cold code; a branch into cold code after it still is not."""
    fn = fn_of((0x00, "FFMA R2, R2, R3, R4"), (0x10, "@P0 EXIT"), (0x20, "UMOV UR4, UR5"), (0x30, "BRA 0x0"),
               (0x40, "BRA 0x40"))
    assert [(lp.start, lp.end) for lp in S.find_loops(fn)] == [(0x00, 0x30)]
    assert S.count(fn, [10], num_warps=1).warp_instructions == 40


# ---------------------------------------------------------------- wavefronts and MMA


@pytest.mark.parametrize("text, wavefronts", [
    ("LDG.E.128 R4, desc[UR4][R2.64]", 4),  # 32 lanes x 16 B = 512 B
    ("LDG.E.64 R4, desc[UR4][R2.64]", 2),
    ("LDG.E R4, desc[UR4][R2.64]", 1),
    ("LDG.E.U16 R4, desc[UR4][R2.64]", 1),  # 64 B still takes a wavefront
    ("STG.E.128 desc[UR4][R2.64], R4", 4),
    ("LDS.128 R4, [R2]", 4),
    ("STS.U16 [R2], R4", 1),
    ("STL.64 [R1+0x8], R4", 2),
    ("LDL.LU R4, [R1]", 1),
    ("LDGSTS.E.BYPASS.128 [R3], desc[UR4][R2.64]", 4),
    ("LDSM.16.M88.4 R4, [R2]", 4),  # four 8x8 matrices of 16-bit values
    ("LDSM.16.MT88.2 R4, [R2]", 2),
    ("STSM.16.M88 [R2], R4", 1),
    ("@!PT LDS RZ, [RZ]", 0),  # never executed
    ("@P0 LDS R4, [R2]", 1),
    ("HGMMA.64x32x16.F32 R24, gdesc[UR8].tnspB, R24, gsb0", (64 + 32) * 32 / 128),  # A and B in shared memory
    ("HGMMA.64x128x16.F32 R24, R88, gdesc[UR40].tnspB, R24", 128 * 32 / 128),  # A in registers
    ("HMMA.16816.F32 R4, R8, R12, R4", 0),  # registers only
    ("FFMA R2, R2, R3, R4", 0),
])
def test_wavefronts_per_execution(text, wavefronts):
    assert S.wavefronts(S.parse_instruction(0, text)) == wavefronts


def test_mma_counted_per_warpgroup_and_hmma_per_warp():
    fn = fn_of((0x00, "HGMMA.64x128x16.F32 R24, R88, gdesc[UR40].tnspB, R24"),
               (0x10, "HMMA.16816.F32 R4, R8, R12, R4"),
               (0x20, "@P0 BRA 0x0"),
               (0x30, "EXIT"))
    for warps in (4, 8):
        c = S.count(fn, [3], num_warps=warps)
        groups = warps // 4
        assert c.mma_macs == 3 * (groups * 64 * 128 * 16 + warps * 16 * 8 * 16)
        assert c.mma_instructions == {"HGMMA.64x128x16.F32": 3 * groups, "HMMA.16816.F32": 3 * warps}
        assert c.wavefronts_by_space == {"mma_operands": 3 * groups * 32}
        assert c.warp_instructions == 4 * warps + 3 * 2 * warps


@pytest.mark.parametrize("text, shape", [
    ("HGMMA.64x256x16.F32.BF16 R24, gdesc[UR8], R24", (64, 256, 16)),
    ("HGMMA.64x64x8.F32.TF32 R24, gdesc[UR8], R24", (64, 64, 8)),
    ("HMMA.1688.F32.TF32 R4, R8, R12, R4", (16, 8, 8)),
    ("HMMA.16816.F32.BF16 R4, R8, R12, R4", (16, 8, 16)),
    ("FFMA R2, R2, R3, R4", None),
])
def test_mma_shapes(text, shape):
    assert S.mma_shape(S.parse_instruction(0, text)) == shape


def test_counts_split_by_space_shuffles_and_categories():
    fn = fn_of((0x00, "LDG.E.128 R4, desc[UR4][R2.64]"), (0x10, "STS.128 [R3], R4"),
               (0x20, "STL [R1], R5"), (0x30, "SHFL.BFLY PT, R6, R5, 0x1, 0x1f"),
               (0x40, "IMAD.MOV.U32 R7, RZ, RZ, R6"), (0x50, "UIADD3 UR4, UR4, 0x1, URZ"), (0x60, "EXIT"))
    c = S.count(fn, [], num_warps=2)
    assert c.wavefronts_by_space == {"global": 8, "shared": 8, "local": 2}
    assert c.l1_wavefronts == 18 and c.shuffles == 2
    assert c.by_category == {"memory": 6, "shuffle": 2, "move": 2, "uniform": 2, "control": 2}


# ---------------------------------------------------------------- occupancy and waves


@pytest.mark.parametrize("regs, shared, warps, per_sm, limit, w", [
    (255, 4096, 4, 2, "registers", 2.0),  # 256 x 32 registers per warp: 8 warps fit
    (128, 4096, 4, 4, "registers", 4.0),
    (132, 45696, 4, 3, "registers", 3.0),  # 136 x 32 = 4352 per warp: 15 warps, rounded down to 12
    (198, 90752, 4, 2, "registers", 2.0),  # both limits give 2 (registers checked first)
    (255, 180864, 4, 1, "shared", 1.0),  # 180864 + 1024 reserved: one per 228 KiB
    (255, 98304, 8, 1, "registers", 2.0),
    (32, 0, 16, 4, "registers", 16.0),  # 64 warps by registers and by the warp limit alike
    (16, 0, 1, 32, "blocks", 8.0),
])
def test_occupancy(regs, shared, warps, per_sm, limit, w):
    occ = pm.occupancy(regs, shared, warps, "h200")
    assert (occ.programs_per_sm, occ.limited_by, occ.warps_per_scheduler) == (per_sm, limit, w)


def test_occupancy_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        pm.occupancy(64, 240000, 4)
    with pytest.raises(ValueError, match="registers"):
        pm.occupancy(256, 0, 4)


def test_waves_and_tail():
    assert pm.waves_and_tail(264, 2, "h200") == (1.0, 1.0)
    waves, tail = pm.waves_and_tail(265, 2, "h200")
    assert waves == pytest.approx(265 / 264) and tail == pytest.approx(2 / waves)
    assert pm.waves_and_tail(66, 1, "h200", imbalance=1.5) == (0.5, 3.0)


def test_small_grids_spread_one_program_per_sm_first():
    occ = pm.occupancy(125, 57344, 8, "h200")  # two programs of 8 warps fit an SM ...
    assert occ.programs_per_sm == 2
    one = pm.resident(occ, 128, 8, "h200")  # ... but 128 programs take 128 SMs, one each
    assert (one.programs_per_sm, one.limited_by, one.warps_per_scheduler) == (1, "grid", 2.0)
    assert pm.resident(occ, 200, 8, "h200") == occ  # 68 SMs hold two
    f = pm.Features(programs=128, num_warps=8, registers=125, shared_bytes=57344, warp_instructions_per_program=1e5,
                    l1_wavefronts_per_program=2e4, mma_macs_per_program=1e7, hbm_bytes=1e6)
    p = pm.predict(f, "h200")
    assert p.occupancy.programs_per_sm == 1 and p.tail == pytest.approx(132 / 128)


def test_floors_and_predict_on_both_gpus():
    f = pm.Features(programs=1056, num_warps=4, registers=128, shared_bytes=0, warp_instructions_per_program=1e5,
                    l1_wavefronts_per_program=2e4, mma_macs_per_program=1e7, hbm_bytes=3.35e8)
    h200, h100 = pm.floors_ms(f, "h200"), pm.floors_ms(f, "h100")
    assert h200["issue"] == pytest.approx(1e5 * 1056 / (132 * 4 * 1.755e6))
    assert h200["l1"] == pytest.approx(2e4 * 1056 / (132 * 1.755e6))
    assert h200["mma"] == pytest.approx(1e7 * 1056 / (132 * 1024 * 1.755e6))
    assert h200["hbm"] == pytest.approx(3.35e8 / 4.8e9) and h100["hbm"] == pytest.approx(0.1)
    p = pm.predict(f, "h200", pm.Params(k=2.0, c=1.0, p=math.inf))
    assert p.bound == "issue" and p.occupancy.programs_per_sm == 4 and p.tail == 1.0
    assert p.ms == pytest.approx(2.0 * h200["issue"] * (1 + 1 / 4))
    assert pm.predict(f, "h100").ms > pm.predict(f, "h200").ms  # same SM work, slower HBM
    with pytest.raises(ValueError, match="unknown GPU"):
        pm.predict(f, "a100")


def test_combine_is_a_smooth_maximum():
    floors = {"issue": 3.0, "l1": 4.0, "mma": 0.0, "hbm": 0.0}
    assert pm.combine(floors, math.inf) == 4.0
    assert pm.combine(floors, 2.0) == pytest.approx(5.0)
    assert 4.0 < pm.combine(floors, 4.0) < 5.0


def test_spearman_with_ties():
    assert pm.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert pm.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert pm.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pm.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)


def test_fit_recovers_known_parameters():
    truth = pm.Params(k=1.3, c=0.7, p=math.inf)
    samples = []
    for i, (regs, warps) in enumerate([(64, 4), (128, 4), (168, 4), (255, 4), (255, 8), (96, 8), (200, 4)]):
        f = pm.Features(programs=500 + 300 * i, num_warps=warps, registers=regs, shared_bytes=1024 * i,
                        warp_instructions_per_program=1e4 * (1 + i % 3), l1_wavefronts_per_program=3e3 * (1 + i),
                        mma_macs_per_program=1e6, hbm_bytes=1e7)
        samples.append((f, pm.predict(f, "h200", truth).ms))
    fitted = pm.fit(samples, "h200")
    assert fitted.params.p == math.inf
    assert fitted.params.k == pytest.approx(1.3, rel=1e-4) and fitted.params.c == pytest.approx(0.7, abs=1e-4)
    assert fitted.rms_log_error < 1e-6 and fitted.loo_rms_log_error < 1e-5 and fitted.spearman == pytest.approx(1)
    import json

    assert json.loads(json.dumps(fitted.summary(), allow_nan=False))["p"] == "inf"  # strict JSON


def test_fit_sums_the_launches_timed_together():
    """Samples measured as two launches in a row (a block and its project GEMM) are predicted as
    the sum of both: the fit recovers the constants from them as from single launches, and
    each sample's prediction is k times the sum, not of either launch alone."""
    truth = pm.Params(k=0.9, c=1.4, p=4.0)

    def features(i, warps=4):
        return pm.Features(programs=400 + 150 * i, num_warps=warps, registers=64 + 24 * (i % 6), shared_bytes=2048 * i,
                           warp_instructions_per_program=2e4 * (1 + i % 4), l1_wavefronts_per_program=4e3 * (1 + i % 5),
                           mma_macs_per_program=2e6 * (1 + i % 3), hbm_bytes=2e7 * (1 + i % 2))

    samples = []
    for i in range(8):
        if i % 2:
            pair = (features(i), features(i + 10, warps=8))
            samples.append((pair, sum(pm.predict(f, "h200", truth).ms for f in pair)))
        else:
            samples.append((features(i), pm.predict(features(i), "h200", truth).ms))
    fitted = pm.fit(samples, "h200", (4.0,))
    assert fitted.params.k == pytest.approx(0.9, rel=1e-4) and fitted.params.c == pytest.approx(1.4, abs=1e-3)
    assert fitted.rms_log_error < 1e-6
    assert fitted.predicted_ms == pytest.approx([ms for _, ms in samples], rel=1e-5)


def test_block_hbm_bytes():
    # MobileNetV2 block 2 at batch 256: 112x112x16 in, 56x56x24 out, fp16.
    act = (256 * 112 * 112 * 16 + 256 * 56 * 56 * 24) * 2
    weights = (16 * 96 + 96 + 10 * 96 + 96 * 24 + 24) * 2
    assert pm.block_hbm_bytes(256, 112, 112, 16, 96, 24, 2, True) == act + weights


# ---------------------------------------------------------------- the measured calibration set


@pytest.fixture(scope="module")
def calibration():
    path = pm.calibration_dir()
    if not (path / "kernels.json").is_file():
        pytest.skip(f"calibration set not found at {path} (set MNV2_PERF_CALIBRATION to its folder)")
    return pm.calibrate(path)


def test_model_fits_the_measured_calibration_set(calibration):
    fitted, kernels = calibration
    assert fitted.n == len(kernels) == 31
    assert fitted.rms_log_error <= 0.2, fitted.summary()
    assert fitted.spearman >= 0.9, fitted.summary()
    assert fitted.loo_rms_log_error <= 0.2, fitted.summary()
    # The constants predict() uses without the set are this fit.
    assert fitted.params.p == pm.CALIBRATED.p
    assert fitted.params.k == pytest.approx(pm.CALIBRATED.k, abs=2e-3)
    assert fitted.params.c == pytest.approx(pm.CALIBRATED.c, abs=2e-3)


def test_counts_agree_with_the_reference_analysis(calibration):
    """Instructions, multiply-adds, occupancy and tails agree with the set's reference
    features exactly.  Wavefronts agree where no never-executed `@!PT LDS` and no single-
    matrix STSM occur (the reference charges those; this model does not)."""
    _, kernels = calibration
    for k in kernels:
        f, r = k.features, k.reference
        floors, occ, waves, tail = pm._terms(f, "h200")
        assert f.warp_instructions_per_program == pytest.approx(r["warp_instructions_per_program"], rel=1e-6), k.tag
        assert floors["mma"] == pytest.approx(r["mma_ms_at_1024"], abs=1e-4), k.tag
        assert floors["hbm"] == pytest.approx(r["hbm_ms"], abs=1e-4), k.tag
        assert (occ.programs_per_sm, occ.warps_per_scheduler) == (r["ctas_per_sm"], r["resident_warps_per_scheduler"])
        assert tail == pytest.approx(r["tail"], abs=1e-3) and waves == pytest.approx(r["waves"], abs=1e-2), k.tag
        quirks = f.counts.by_opcode.get("STSM.16.M88", 0) + f.counts.never_executed
        if not quirks:
            assert f.l1_wavefronts_per_program == pytest.approx(r["l1_wavefronts_per_program"], rel=1e-6), k.tag
        else:
            assert f.l1_wavefronts_per_program < r["l1_wavefronts_per_program"], k.tag


# ---------------------------------------------------------------- the project's own kernels (compiled for sm_90)

ANALYSE_LAUNCHES = """
import json, sys, torch
from mnv2_fast.tools.interpreter import use_compiler
use_compiler()
from mnv2_fast.kernels import aot
from mnv2_fast.tools import perf_model as pm

picked = [nl for nl in pm.network_launches(256, torch.float16, "h200") if nl.block in (1, 2, 12, 17) or nl.part == "head"]
out = {nl.launch.label: pm.analyse_launch(nl.launch, 256, "h200", part=nl.part, block=nl.block, sass_dir=sys.argv[1])
       for nl in picked}

def refuse(*a, **k):
    raise AssertionError("compiled again despite the cache")

aot.compile_variant = refuse  # a second pass must come from the on-disk cache
again = {nl.launch.label: pm.analyse_launch(nl.launch, 256, "h200")["predicted_ms"] for nl in picked}
print(json.dumps({"first": out, "again": again}))
"""


def test_analyse_launch_on_compiled_kernels(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # AOT needs the real JIT
    env["MNV2_FAST_SASS_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-c", ANALYSE_LAUNCHES, str(tmp_path / "sass")], cwd=pm.repo_root(), env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(r.stdout)
    records = result["first"]
    assert result["again"] == {label: rec["predicted_ms"] for label, rec in records.items()}
    by_block = {rec["block"]: rec for rec in records.values()}
    specs = block_specs(1.0, resolution=224)
    for block in (1, 2, 12):
        # The persistent tile loop around the hidden-chunk loop (gone when one chunk covers
        # the block); the depthwise's row loop is unrolled.
        rec, spec = by_block[block], specs[block - 1]
        cfg = BlockConfig.from_dict(json.loads(rec["config_json"]))
        tiles, chunks = spec.tiles(cfg, 256), -(-spec.hidden // cfg.block_hid)
        expected = [("tiles", 0, tiles / rec["programs"])] + ([("hidden chunks", 1, chunks)] if chunks > 1 else [])
        assert [(lp["name"], lp["depth"]) for lp in rec["loops"]] == [(n, d) for n, d, _ in expected]
        assert [lp["trips_per_program"] for lp in rec["loops"]] == pytest.approx([t for _, _, t in expected])
    for rec in records.values():
        assert rec["sass"] and (tmp_path / "sass" / rec["sass"]).is_file()
        fn = S.kernel((tmp_path / "sass" / rec["sass"]).read_text())
        assert [(f"{lp.start:#x}", f"{lp.end:#x}") for lp in S.find_loops(fn)] == [
            (lp["sass_start"], lp["sass_end"]) for lp in rec["loops"]]
        assert rec["registers"] > 0 and rec["programs_per_sm"] >= 1 and rec["bound"] in pm.FLOORS
        assert rec["mma_macs_per_program"] >= rec["implied_macs_per_program"] * (1 - 1e-9) > 0
        assert rec["predicted_ms"] > max(rec["floors_ms"].values())
    for block in (1, 2, 12):  # the products do the work their tiles imply (64-row tiles at least)
        assert 1.0 - 1e-9 <= by_block[block]["mma_replication"] <= 2.0
    # Block 17 runs its project apart: the kernel does the expand only, the GEMM after it the
    # project of all 256 x 49 pixels, and the block's time is both launches'.
    rec, spec = by_block[17], specs[16]
    project = rec["project"]
    assert json.loads(rec["config_json"])["project_apart"]
    assert rec["predicted_ms"] == pytest.approx(rec["kernel_ms"] + project["predicted_ms"])
    pixels = 256 * spec.ho * spec.wo
    assert rec["mma_macs_per_program"] * rec["programs"] < 2 * pixels * spec.cin * spec.hidden
    assert project["mma_macs_per_program"] * project["programs"] >= pixels * spec.hidden * spec.cout
    assert project["predicted_ms"] > max(project["floors_ms"].values())
    # Its instructions per depthwise element-tap count both launches.
    both = rec["warp_instructions_per_program"] * rec["programs"] + project["warp_instructions_per_program"] * \
        project["programs"]
    assert rec["instructions_per_element_tap"] == pytest.approx(both * 32 / (pixels * spec.hidden * 9))
    assert "instructions_per_element_tap" not in project


def test_sass_cache_is_pruned_least_recently_used_first(tmp_path, monkeypatch):
    """Past its bound the cache drops its least recently used variants (a .sass with its .json)
    down to three quarters of the bound; a hit counts as a use."""
    import os

    for i in range(10):  # variant i used at time 1000 + i; 110 bytes each
        (tmp_path / f"v{i}.sass").write_text("x" * 100)
        (tmp_path / f"v{i}.json").write_text("y" * 10)
        os.utime(tmp_path / f"v{i}.sass", (1000 + i, 1000 + i))
    os.utime(tmp_path / "v0.sass", (2000, 2000))  # the oldest, used again last
    (tmp_path / "half.sass").write_text("z" * 500)  # no .json yet (being written): not counted, kept
    assert pm.prune_sass_cache(tmp_path, 1100) == 0  # within the bound: nothing goes
    assert pm.prune_sass_cache(tmp_path, 550) == 7  # 1100 -> 330 bytes, at most 412
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.sass", "v0.json", "v0.sass", "v8.json", "v8.sass",
                                                         "v9.json", "v9.sass"]
    monkeypatch.setenv("MNV2_FAST_SASS_CACHE_BYTES", "1234")
    assert pm.sass_cache_limit() == 1234
    monkeypatch.delenv("MNV2_FAST_SASS_CACHE_BYTES")
    assert pm.sass_cache_limit() == pm.SASS_CACHE_BYTES == 1 << 30


# ---------------------------------------------------------------- the speed regression test (no GPU)

REGRESSION_FILE = pm.repo_root() / "bench" / "results" / "model-h200.json"


def test_predicted_network_time_has_not_regressed(tmp_path):
    """The shipped configs' predicted total for one MobileNetV2 forward (H200, batch 256,
    fp16) may not grow by more than 10% over the committed bench/results/model-h200.json
    without that file being regenerated (`mnv2-fast perf-model --json ...`): a speed
    regression test that needs no GPU."""
    import json
    import os
    import subprocess
    import sys

    committed = json.loads(REGRESSION_FILE.read_text())
    out = tmp_path / "model.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # AOT needs the real JIT
    r = subprocess.run([sys.executable, "-m", "mnv2_fast.tools.cli", "perf-model", "--gpu", "h200", "--batch", "256",
                        "--dtype", "float16", "--json", str(out)], cwd=pm.repo_root(), env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    now = json.loads(out.read_text())
    assert [x["label"] for x in now["launches"]] == [x["label"] for x in committed["launches"]]
    slower = {x["label"]: (old["predicted_ms"], x["predicted_ms"]) for x, old in zip(now["launches"], committed["launches"])
              if x["predicted_ms"] > 1.10 * old["predicted_ms"]}
    assert now["total_predicted_ms"] <= 1.10 * committed["total_predicted_ms"], (
        f"predicted {now['total_predicted_ms']:.3f} ms against {committed['total_predicted_ms']:.3f} ms committed; "
        f"slower launches: {slower}")
    for key in ("gpu", "triton", "batch", "dtype", "calibration", "launches", "total_predicted_ms"):
        assert key in now
    for rec in now["launches"]:
        for key in ("part", "block", "label", "config", "programs", "num_warps", "registers", "shared_bytes", "sass",
                    "loops", "warp_instructions_per_program", "l1_wavefronts_per_program", "floors_ms",
                    "predicted_ms", "cudnn_ms"):
            assert key in rec, key


@pytest.mark.parametrize("name", ["mnasnet1_0", "efficientnet_lite0", "mobilenetv4_conv_small"])
def test_family_launches_are_the_fused_parts_with_shipped_configs(name):
    """perf-model --model NAME: one launch per fused part of optimize(NAME), in order, and every
    block of the GPU suite's family models has a spill-free entry in the reference table (the
    heuristic's 5x5 and UIB tiles spill)."""
    import torch

    from mnv2_fast.kernels import choice
    from mnv2_fast.kernels.tuned import lookup_tuned
    from mnv2_fast.tools import zoo

    if zoo.library(name)[0] == "timm":
        pytest.importorskip("timm")
    launches = pm.family_launches(name, 256, torch.float16, "h200")
    parts = zoo.fused_parts(name, zoo.resolution(name))
    first = "stem" if name == "mobilenetv4_conv_small" else "stem+block"  # MNv4's first block is a full conv
    assert [nl.part for nl in launches] == [first] + ["block"] * (len(parts) - 3) + ["head", "classifier"]
    blocks = [nl.launch for nl in launches if nl.part == "block"]
    assert {b.shape.ksize for b in blocks} >= ({3, 5} if name != "mobilenetv4_conv_small" else {0, 3, 5})
    for b in blocks:
        assert lookup_tuned(b.shape, torch.float16, 256, choice.REFERENCE_TABLE) == b.config, b.label
    stem, head = launches[0].launch, launches[-2].launch
    stem_act = stem.shape[4] if first == "stem" else stem.shape.act_exp  # the stem as block 1's expand
    assert stem_act == head.shape[4] == ("relu6" if name == "efficientnet_lite0" else "relu")
    if first == "stem+block":  # the fused launch has its entry too
        assert lookup_tuned(stem.shape, torch.float16, 256, choice.REFERENCE_TABLE) == stem.config, stem.label


# ---------------------------------------------------------------- recalibration on measured blocks (no GPU)


def _record(i: int, **extra) -> dict:
    """An analyse_launch record of made-up but varied Features (occupancy, floors, tail)."""
    f = pm.Features(programs=132 * (1 + i % 3), num_warps=(4, 8, 16)[i % 3], registers=(96, 168, 128)[i % 3],
                    shared_bytes=32768 * (1 + i % 2), warp_instructions_per_program=2e5 * (1 + i),
                    l1_wavefronts_per_program=1e5 * (3 + i % 4), mma_macs_per_program=1e8 * (1 + i % 5),
                    hbm_bytes=2e7 * (1 + i), imbalance=1.0 + 0.05 * (i % 2))
    fields = ("programs", "num_warps", "registers", "shared_bytes", "warp_instructions_per_program",
              "l1_wavefronts_per_program", "mma_macs_per_program", "hbm_bytes", "imbalance")
    return {**{k: getattr(f, k) for k in fields}, "predicted_ms": pm.predict(f).ms, "config": f"config {i}", **extra}


def test_recalibration_on_measured_blocks_recovers_a_uniform_miss():
    """A GPU run in which every fused block took 1.25x its prediction: the refit multiplies k
    by 1.25, keeps c and p, and predicts each measured time; a block whose project runs apart
    (two launches, one measured time) is fitted as their sum; other providers and untimed
    cases are left out."""
    specs = block_specs(1.0, resolution=224)
    records = {b: _record(b) for b in range(1, 7)}
    records[17] = _record(17, project=_record(30))
    records[17]["predicted_ms"] += records[17]["project"]["predicted_ms"]
    cfg = json.dumps(BlockConfig(tile_h=2, tile_w=2).to_dict())

    def case(block, provider="fused", ms=None):
        s = specs[block - 1]
        return {"block": block, "provider": provider, "dtype": "float16", "batch": 256, "ms": ms, "cin": s.cin,
                "hidden": s.hidden, "cout": s.cout, "stride": s.stride, "size": s.h, "config_json": cfg}

    summary = {"blocks": [case(b, ms=1.25 * rec["predicted_ms"]) for b, rec in records.items()]
               + [case(1, provider="eager_cl", ms=1.0), case(2, provider="fused_heuristic", ms=1.0), case(3)]}
    seen = []

    def analyse(launch, batch, gpu):
        seen.append((launch.label, launch.shape.h, launch.config.tile_h, batch, gpu))
        return records[int(launch.label.rsplit(" ", 1)[1])]

    rows = pm.measured_blocks(summary, "h100", analyse=analyse)
    assert [r["block"] for r in rows] == [1, 2, 3, 4, 5, 6, 17]
    assert seen[0] == ("w1.0 block 1", 112, 2, 256, "h100")
    fitted, table = pm.recalibrate(rows, "h100")
    assert fitted.n == 7 and fitted.rms_log_error < 1e-3
    assert fitted.params.k == pytest.approx(1.25 * pm.CALIBRATED.k, rel=1e-3)
    assert fitted.params.c == pytest.approx(pm.CALIBRATED.c, abs=1e-2) and fitted.params.p == pm.CALIBRATED.p
    assert [r["launches"] for r in table] == [1] * 6 + [2]
    for r in table:
        assert r["refit_ms"] == pytest.approx(r["measured_ms"], rel=1e-3)
        assert r["predicted_ms"] == pytest.approx(r["measured_ms"] / 1.25)
    assert "kernel + project GEMM" in pm.recalibration_table(fitted, table)
    summary["blocks"][0]["cin"] = 99  # another network's block under the same index
    with pytest.raises(ValueError, match="not MobileNetV2 1.0's"):
        pm.measured_blocks(summary, "h100", analyse=analyse)


def test_recalibrate_command_refuses_what_it_cannot_fit(tmp_path, capsys):
    """`mnv2-fast perf-model --recalibrate`: a --gpu other than the run's, or a run without
    three timed fused blocks, is an error (exit 2), not a fit of nothing."""
    import argparse

    ap = argparse.ArgumentParser()
    pm.add_arguments(ap)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"gpu_slug": "h100", "blocks": []}))
    assert pm.run(ap.parse_args(["--recalibrate", str(path), "--gpu", "h200"])) == 2
    assert "measured on h100, not h200" in capsys.readouterr().err
    assert pm.run(ap.parse_args(["--recalibrate", str(path)])) == 2
    assert "0 fused block(s)" in capsys.readouterr().err


def test_recalibration_reads_the_layers_a_faulting_run_diagnosed():
    """A run whose fused model faulted times its layers in bench/gpu_diag.py instead
    (summary.json's `diag`): those blocks recalibrate the model too. A layer that faulted, one
    that computed a wrong result, the head, and a block the benchmarks timed themselves (their
    time comes first) are left out."""
    specs = block_specs(1.0, resolution=224)
    records = {b: _record(b) for b in range(1, 6)}
    cfg = BlockConfig(tile_h=2, tile_w=2).to_dict()

    def layer(block, status="ok", ms=None):
        return {"layer": f"features.{block}", "batch": 256, "dtype": "float16", "status": status, "config": cfg,
                "shape": specs[block - 1].to_dict(), "fused_ms": ms}

    diag = [layer(b, ms=1.25 * rec["predicted_ms"]) for b, rec in records.items()]
    diag += [layer(6, status="faulted"), layer(7, status="wrong", ms=1.0),
             {"layer": "features.18", "batch": 256, "dtype": "float16", "status": "ok", "config": None, "shape": None,
              "fused_ms": 0.05}]
    bench = {"block": 1, "provider": "fused", "dtype": "float16", "batch": 256, "ms": 1.25 * records[1]["predicted_ms"],
             "cin": specs[0].cin, "hidden": specs[0].hidden, "cout": specs[0].cout, "stride": specs[0].stride,
             "size": specs[0].h, "config_json": json.dumps(cfg)}
    summary = {"blocks": [bench], "diag": {"layers": diag}}
    seen = []

    def analyse(launch, batch, gpu):
        seen.append(launch.label)
        return records[int(launch.label.rsplit(" ", 1)[1])]

    rows = pm.measured_blocks(summary, "h200", analyse=analyse)
    assert [r["block"] for r in rows] == [1, 2, 3, 4, 5] and seen == [f"w1.0 block {b}" for b in range(1, 6)]
    fitted, table = pm.recalibrate(rows, "h200")
    assert fitted.n == 5 and fitted.params.k == pytest.approx(1.25 * pm.CALIBRATED.k, rel=1e-3)
    diag[1]["shape"] = specs[7].to_dict()  # another block's shape under features.2
    with pytest.raises(ValueError, match="not MobileNetV2 1.0's block 2"):
        pm.measured_blocks(summary, "h200", analyse=analyse)
