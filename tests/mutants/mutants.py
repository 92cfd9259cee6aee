"""The mutant suite's catalogue: plausible kernel and runtime bugs, each a small source edit,
with the tests that must fail when it is applied (tests/mutants/run.py applies each to a copy
of the package and runs them).

Each edit replaces `old`, which must occur exactly once in `file`, with `new`.  When the source
moves on and an `old` is gone, the runner says so: update the entry to the new code, do not
drop it.  Add one entry for each new kernel feature.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str  # what the edit breaks, in words
    file: str  # path in the repository
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids: at least one must fail


BLOCK, STEM, HEAD = "kernels/block.py", "kernels/stem.py", "kernels/head.py"

MUTANTS = [
    # ---- the six planted in issue 14, in today's code
    Mutant("fold-eps-hard-coded", "fold_bn uses 1e-5 instead of the BatchNorm's eps",
           "mnv2_fast/folding.py", "torch.sqrt(var + bn.eps)", "torch.sqrt(var + 1e-5)",
           ("tests/test_folding.py",)),
    Mutant("block-image-mask-dropped", "stores of a tile's images past the batch are not masked",
           BLOCK, "ok_top = q_in & (n0 + q_img < N) & (oh < HO)", "ok_top = q_in & (oh < HO)",
           ("tests/test_block_kernel.py::test_block_tilings", "tests/test_family_blocks.py::test_family_tilings")),
    Mutant("project-acc-rounded", "the fp32 project accumulator is rounded to the activation dtype per hidden chunk",
           BLOCK, "    return tl.dot(d, w, acc, input_precision=DOT_PRECISION)",
           "    return tl.dot(d, w, acc, input_precision=DOT_PRECISION).to(d.dtype).to(tl.float32)",
           ("tests/test_precision.py::test_project_sums_hidden_chunks_in_fp32",)),
    Mutant("project-weight-unmasked", "the project weight is loaded without its hidden-channel mask",
           BLOCK, "mask=h_ok[:, None] & (co < COUT)[None, :], other=0.0)", "mask=(co < COUT)[None, :], other=0.0)",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("block-input-base-int32", "the block's input image base in 32 bits",
           BLOCK, "x_img = x_ptr + n0.to(tl.int64) * (H * W * CIN)", "x_img = x_ptr + n0 * (H * W * CIN)",
           ("tests/test_int64.py::test_offsets_past_2_31_elements[block]",)),
    Mutant("block-output-base-int32", "the block's output image base in 32 bits",
           BLOCK, "y_img = y_ptr + n0.to(tl.int64) * (HO * WO * COUT)", "y_img = y_ptr + n0 * (HO * WO * COUT)",
           ("tests/test_int64.py::test_offsets_past_2_31_elements[block]",)),
    Mutant("stem-input-base-int32", "the stem's input image base in 32 bits",
           STEM, "x_img = x_ptr + n.to(tl.int64) * sxn", "x_img = x_ptr + n * sxn",
           ("tests/test_int64.py::test_offsets_past_2_31_elements[stem]",)),
    Mutant("stem-output-base-int32", "the stem's output image base in 32 bits",
           STEM, "y_img = y_ptr + n.to(tl.int64) * HO * WO * COUT", "y_img = y_ptr + n * HO * WO * COUT",
           ("tests/test_int64.py::test_offsets_past_2_31_elements[stem]",)),
    Mutant("head-group-base-int32", "the head's image-group base in 32 bits",
           HEAD, "x_grp = x_ptr + img0.to(tl.int64) * (HW * CIN)", "x_grp = x_ptr + img0 * (HW * CIN)",
           ("tests/test_int64.py::test_offsets_past_2_31_elements[head]",)),
    Mutant("linear-row-int32", "the classifier's row index in 32 bits",
           HEAD, "m = tl.program_id(0).to(tl.int64) * BLOCK_M", "m = tl.program_id(0) * BLOCK_M",
           ("tests/test_int64.py::test_offsets_past_2_31_elements[linear]",)),
    Mutant("auto-always-triton", 'backend "auto" picks Triton for every tensor',
           "mnv2_fast/ops.py", "    if backend == \"auto\":\n        return x.is_cuda",
           "    if backend == \"auto\":\n        return True",
           ("tests/test_engines.py",)),

    # ---- the block kernel's features
    Mutant("halo-relu6-bound", "relu6's upper bound is not zeroed outside the image (the depthwise's zero padding)",
           BLOCK, "r_hi = _upper_bound(r_ok, ACT_EXP)", "r_hi = _upper_bound(r_in, ACT_EXP)",
           ("tests/test_block_kernel.py::test_halo_pixels_contribute_zero_not_relu6_bias",)),
    Mutant("scratch-parity-per-tile", "the scratch double buffer restarts at buffer 0 on each tile (a race when a "
                                      "tile has an odd number of chunks)",
           BLOCK, "    for work in range(pid, n_work, tl.num_programs(0)):\n",
           "    for work in range(pid, n_work, tl.num_programs(0)):\n        step = 0\n",
           ("tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order",)),
    Mutant("scratch-barrier-dropped", "no barrier between staging a chunk and reading it back",
           BLOCK, "            tl.debug_barrier()\n", "",
           ("tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order",)),
    Mutant("stage-image-ring-not-zeroed", "whole-image tiles never zero the halo ring of the scratch",
           BLOCK, "        if STAGE_IMAGE:\n            _zero_scratch(scratch, P_IN, BLOCK_HID)\n", "",
           ("tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order",
            "tests/test_block_kernel.py::test_block_stage_image_tiles")),
    Mutant("stage-image-rows-shifted", "whole-image tiles stage the image one region row too high (onto the ring)",
           BLOCK, "    p_y = (p // TILE_W) % TILE_H + PAD", "    p_y = (p // TILE_W) % TILE_H",
           ("tests/test_block_kernel.py::test_block_stage_image_tiles",)),
    Mutant("stage-image-padding-rows-stored", "the padding rows of the whole-image enumeration are stored past "
                                              "the staged region",
           BLOCK, "tl.store(stage_ptrs + buf, e.to(dtype), mask=r_in[:, None])", "tl.store(stage_ptrs + buf, e.to(dtype))",
           ("tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order",)),
    Mutant("stage-image-zeroing-unordered", "the halo ring's zeros are not ordered before the first chunk's stores",
           BLOCK, "                                                                          scratch.dtype.element_ty))\n"
                  "    tl.debug_barrier()\n",
           "                                                                          scratch.dtype.element_ty))\n",
           ("tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order",)),
    Mutant("stage-vectors-pairs-crossed", "the staged chunk's vector stores put the accumulator's column pairs 1 "
                                          "and 2 in each other's channels",
           BLOCK, "_store_words(base, offs, ok, (l0, h0), (l1, h1), (l2, h2), (l3, h3), ASM, 4, MASKED)",
           "_store_words(base, offs, ok, (l0, h0), (l2, h2), (l1, h1), (l3, h3), ASM, 4, MASKED)",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("stage-order-bias-unordered", "the expand bias is added in channel order to columns in the stores' order",
           BLOCK, "                    if VECTORS:\n                        b = _stage_order(b, BLOCK_HID)\n", "",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("stage-vectors-padding-rows-stored", "the vector stores of whole-image tiles store the enumeration's "
                                                "padding rows past the staged region",
           BLOCK, "P_STAGE, BLOCK_HID, INLINE_PTX,\n                                  STAGE_IMAGE)",
           "P_STAGE, BLOCK_HID, INLINE_PTX,\n                                  False)",
           ("tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order",
            "tests/test_block_kernel.py::test_block_stage_image_tiles")),
    Mutant("quads-right-taps-unshifted", "at stride 2 the right pixels of 2x2 groups take the weights one column "
                                         "back instead of two",
           BLOCK, "                tr_w = t2 if STRIDE == 2 else t1", "                tr_w = t1",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("quads-right-column-unmasked", "2x2 groups store their right column past the output's last column",
           BLOCK, "            ok_tr = ok_top & (ow + 1 < WO)", "            ok_tr = ok_top",
           ("tests/test_block_kernel.py::test_block_tilings",
            "tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order")),
    Mutant("quads-split-crossed", "2x2 groups split their accumulators with the left and right columns crossed",
           BLOCK, "    top_l, top_r = _split_pairs(top, P2, CO)", "    top_r, top_l = _split_pairs(top, P2, CO)",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("project-apart-residual-dropped", "the GEMM that projects a block's hidden tensor never adds the residual",
           HEAD, "    if HAS_RESIDUAL:\n        acc += tl.load(r_ptr", "    if False:\n        acc += tl.load(r_ptr",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("project-apart-right-column-unmasked", "the hidden tensor's stores of 2x2 groups write their right column "
                                                  "past the output's last column",
           BLOCK, "        tl.store(tl_ptrs + HIDDEN, d_tr.to(dtype), mask=(ok_top & right)[:, None] & h_ok[None, :])",
           "        tl.store(tl_ptrs + HIDDEN, d_tr.to(dtype), mask=ok_top[:, None] & h_ok[None, :])",
           ("tests/test_block_kernel.py::test_block_tilings",
            "tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order")),
    Mutant("project-apart-bottom-row-skipped", "the hidden tensor's bottom pixels of each pair are never written",
           BLOCK, "    tl.store(bl_ptrs, d_bl.to(dtype), mask=ok_bot[:, None] & h_ok[None, :])\n", "",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("hidden-split-parts-overlap", "every work item of a split tile computes the tile's first hidden chunks",
           BLOCK, "            h_lo = work % HIDDEN_SPLIT * SPLIT_HID\n", "            h_lo = 0\n",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("join-pairs-swapped", "join_pairs projects the bottom pixels into the top pixels' rows and back crossed",
           BLOCK, "    return tl.reshape(tl.permute(tl.join(top, bot), (0, 2, 1)), (2 * P2, BLOCK_HID))",
           "    return tl.reshape(tl.permute(tl.join(bot, top), (0, 2, 1)), (2 * P2, BLOCK_HID))",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("join-pairs-split-unordered", "join_pairs splits the accumulators without undoing the interleave",
           BLOCK, "    return tl.split(tl.permute(tl.reshape(acc, (P2, 2, CO)), (0, 2, 1)))",
           "    return tl.split(tl.reshape(acc, (P2, CO, 2)))",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("padding-pairs-read-anywhere", "padding pixel pairs read windows past the staged region",
           BLOCK, "q_last = tl.minimum(q, IMGS * (TILE_H // GH) * QW - 1)", "q_last = q",
           ("tests/test_block_kernel.py::test_every_access_is_in_bounds_and_the_scratch_in_barrier_order",)),
    Mutant("pair-bottom-uses-top-rows", "the bottom pixel of a pair sums the top pixel's staged rows",
           BLOCK, "acc_bl += tl.where(j >= STRIDE, row_bl.to(tl.float32), 0.0)",
           "acc_bl += tl.where(j < KSIZE, row_bl.to(tl.float32), 0.0)",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("pair-bottom-row-unmasked", "the bottom pixel of the last pair is stored below an odd-height output",
           BLOCK, "ok_bot = ok_top & (oh + 1 < HO)", "ok_bot = ok_top",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("depthwise-rows-rounded", "the depthwise sum across rows is kept in the activation dtype",
           BLOCK, "        acc_tl += tl.where(j < KSIZE, row_tl.to(tl.float32), 0.0)\n"
                  "        acc_bl += tl.where(j >= STRIDE, row_bl.to(tl.float32), 0.0)\n",
           "        acc_tl = (acc_tl + tl.where(j < KSIZE, row_tl.to(tl.float32), 0.0)).to(r.dtype).to(tl.float32)\n"
           "        acc_bl = (acc_bl + tl.where(j >= STRIDE, row_bl.to(tl.float32), 0.0)).to(r.dtype).to(tl.float32)\n",
           ("tests/test_precision.py::test_depthwise_sums_rows_in_fp32",)),
    Mutant("expand-parts-rounded", "the expand's sum over its two input-channel parts is rounded to the activation dtype",
           BLOCK, "    return tl.dot(x, w, e, input_precision=DOT_PRECISION)",
           "    return tl.dot(x, w, e, input_precision=DOT_PRECISION).to(x.dtype).to(tl.float32)",
           ("tests/test_precision.py::test_expand_sums_its_two_input_parts_in_fp32",)),
    Mutant("second-output-part-dropped", "the second output-channel part (CO_B) is never stored",
           BLOCK, "            if CO_B > 0:\n                _store_part(", "            if CO_B < 0:\n                _store_part(",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("second-input-part-dropped", "the expand skips its second input-channel part (K_B)",
           BLOCK, "                    if K_B > 0:\n                        e = _expand_part(x_b, e,",
           "                    if K_B < 0:\n                        e = _expand_part(x_b, e,",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("block-span-guard-dropped", "the launcher no longer refuses tiles beyond 32-bit offsets",
           BLOCK, "    if span > INT32_MAX:\n", "    if False:\n",
           ("tests/test_int64.py::test_block_refuses_images_beyond_32_bit_offsets",)),

    # ---- the inverted-residual family's features (5x5, activations per stage, UIB, TF padding)
    Mutant("depthwise-5x5-three-columns", "a 5x5 depthwise sums only its first three columns of taps",
           BLOCK, "        for m in tl.static_range(KSIZE + (STRIDE if GW == 2 else 0)):",
           "        for m in tl.static_range(3 + (STRIDE if GW == 2 else 0)):",
           ("tests/test_family_blocks.py::test_family_block_matches_unfused",)),
    Mutant("recomputed-sets-input-sizes", "the epilogue's recomputed pixel-set positions take the input's size for the "
                                          "output's (wrong at stride 2)",
           BLOCK, "_pixel_sets(_opaque(tl.arange(0, P2), INLINE_PTX), H, W, HO,\n"
                  "                                                                      WO,",
           "_pixel_sets(_opaque(tl.arange(0, P2), INLINE_PTX), H, W, H,\n"
           "                                                                      W,",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("tall-lower-rows-taps-shifted", "4x2 groups: the bottom pixel row takes the kernel rows of the row above",
           BLOCK, "j - 3 * STRIDE, m, STRIDE, KSIZE)", "j - 2 * STRIDE, m, STRIDE, KSIZE)",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("tall-bottom-rows-unmasked", "4x2 groups store rows past the output's last row",
           BLOCK, "    ok = ok_top & (oh + V < HO) & (ow + U < WO)\n", "    ok = ok_top & (ow + U < WO)\n",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("tall-bands-crossed", "4x2 groups split their accumulators with the upper and lower 2x2 bands crossed",
           BLOCK, "    upper, lower = _split_pairs(acc, 4 * P2, BCO)", "    lower, upper = _split_pairs(acc, 4 * P2, BCO)",
           ("tests/test_block_kernel.py::test_block_tilings",)),
    Mutant("depthwise-fp16-relu-clamped-at-6", "the fp16 depthwise epilogue clamps ReLU at 6 as for ReLU6",
           BLOCK, "            out = _activation(e16 + b16, ACT)", "            out = _activation(e16 + b16, \"relu6\")",
           ("tests/test_family_blocks.py",)),
    Mutant("depthwise-act-always-relu6", "the depthwise's activation is ReLU6 whatever the block has (ReLU)",
           BLOCK, "    acc = _activation(acc + bias, ACT)\n", "    acc = _activation(acc + bias, \"relu6\")\n",
           ("tests/test_family_blocks.py::test_family_block_matches_unfused",)),
    Mutant("start-depthwise-bias-dropped", "UIB's start depthwise leaves out its (BN-folded) bias",
           BLOCK, "    return acc + b[None, :]\n", "    return acc\n",
           ("tests/test_family_blocks.py::test_family_block_matches_unfused",)),
    Mutant("ffn-expand-act-dropped", "the FFN path (no middle depthwise) skips the expand's activation on the top pixels",
           BLOCK, "e_t = _bias_act(e_t, b, h_ok, ACT_EXP, HIDDEN, BLOCK_HID)", "e_t = _bias_act(e_t, b, h_ok, \"none\", HIDDEN, BLOCK_HID)",
           ("tests/test_family_blocks.py::test_family_block_matches_unfused",)),
    Mutant("tf-same-padding-symmetric", "TensorFlow 'same' padding taken as k // 2 on every side",
           BLOCK, "pad_t = _tf_same_pad(HO, STRIDE, KSIZE, H)", "pad_t = KSIZE // 2",
           ("tests/test_family_blocks.py::test_family_block_matches_unfused",)),
    Mutant("project-act-dropped", "the activation after the project (depthwise-separable blocks) is skipped",
           BLOCK, "    acc = _activation(acc, ACT)  # depthwise-separable blocks", "    acc = acc  # depthwise-separable blocks",
           ("tests/test_family_blocks.py::test_family_block_matches_unfused",)),
    Mutant("stem-act-always-relu6", "the stem's activation is ReLU6 whatever the model has (MNASNet's ReLU)",
           STEM, "[None, :], ACT)", "[None, :], \"relu6\")",
           ("tests/test_family_models.py::test_whole_model_matches_the_unfused_one",)),

    # ---- the stem, the head and the classifier
    Mutant("stem-top-padding-unmasked", "the stem reads the row above the image instead of its zero padding",
           STEM, "ok = pix_ok & (ih0 + KH >= 0) & (ih0 + KH < H)", "ok = pix_ok & (ih0 + KH < H)",
           ("tests/test_stem_head.py::test_stem",)),
    Mutant("head-short-group-store", "the head stores pooled rows for images past the batch",
           HEAD, "mask=c_ok[:, None] & ((slot < IMGS) & (img < N))[None, :])",
           "mask=c_ok[:, None] & (slot < IMGS)[None, :])",
           ("tests/test_stem_head.py::test_head_pool",)),
    Mutant("head-pixels-past-group-loaded", "the head loads pixels past its images (the next group's, or past the "
                                            "input's end in the last group)",
           HEAD, "mask=k_ok[:, None] & p_ok[None, :], other=0.0)", "mask=k_ok[:, None], other=0.0)",
           ("tests/test_stem_head.py::test_head_pool",)),
    Mutant("head-acc-rounded", "the head's 1x1 conv accumulator is rounded to the activation dtype per input step",
           HEAD, "            acc = tl.dot(w_t, x_t, acc, input_precision=DOT_PRECISION)",
           "            acc = tl.dot(w_t, x_t, acc, input_precision=DOT_PRECISION).to(x_t.dtype).to(tl.float32)",
           ("tests/test_precision.py::test_head_sums_input_channel_steps_in_fp32",)),
    Mutant("linear-column-store-unmasked", "the classifier stores columns past its output's width",
           HEAD, "    ok = m_ok[:, None] & j_ok[None, :]\n", "    ok = m_ok[:, None] & (j >= 0)[None, :]\n",
           ("tests/test_stem_head.py::test_linear",)),
    Mutant("linear-acc-rounded", "the classifier's accumulator is rounded to the activation dtype per input step",
           HEAD, "        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)",
           "        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION).to(a.dtype).to(tl.float32)",
           ("tests/test_precision.py::test_linear_sums_input_steps_in_fp32",)),

    # ---- product precision
    Mutant("fp32-always-tf32", "fp32 products run on TF32 whatever the switch",
           "kernels/_common.py", "    if dtype == torch.float32 and not allow_tf32:\n", "    if False:\n",
           ("tests/test_precision.py",)),
    Mutant("tf32-follows-cublas", "convolutions' allow_tf32=None follows cuBLAS's switch instead of cuDNN's",
           "kernels/_common.py",
           "    return torch.backends.cudnn.allow_tf32 if allow_tf32 is None else allow_tf32",
           "    return torch.backends.cuda.matmul.allow_tf32 if allow_tf32 is None else allow_tf32",
           ("tests/test_precision.py",)),
]
